"""The eval stage of ``lmforge run``: held-out bits per byte per source (base model and
assistant), the multiple-choice benchmark, and domain QA on the questions of the contracts the
data stage held out, with and without RAG, beside the retrieval-only baseline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from lmforge.atomic import atomic_write_jsonl
from lmforge.config import AssistantConfig, EvalConfig
from lmforge.data import heldout_questions
from lmforge.eval import QAItem, bits_per_byte_by_source, evaluate_mcq, evaluate_qa, read_questions
from lmforge.model import Transformer, load_model
from lmforge.rag import Grounding
from lmforge.reporting import markdown_table, write_report_pair
from lmforge.tokenizer import load_chat_format, load_tokenizer


def _timed(results: dict[str, Any], name: str, work: Any) -> None:
    start = time.perf_counter()
    results[name] = work()
    results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)


def evaluate_run(eval: EvalConfig, assistant: AssistantConfig, model: Path, base: Path,
                 shards: Path, corpus: Path, index: Path, queries: Path | None, out: Path,
                 origin: Path | None = None) -> dict[str, Any]:
    """``model`` is the assistant, ``base`` the pretrained model it started from; domain QA asks
    the ``queries`` of the contracts the data stage held out of ``corpus``. ``origin``: the
    open model continued pretraining started from, scored beside them (with its own
    tokenizer) so that what the domain gained and the general text lost are both visible."""
    chat = load_chat_format(model)
    tok = chat.tokenizer
    assistant_model = load_model(model).eval()
    models: list[tuple[str, Transformer, Tokenizer | None]] = [
        ("base", load_model(base).eval(), None), ("assistant", assistant_model, None)]
    if origin is not None:
        models.insert(0, ("origin", load_model(origin).eval(), load_tokenizer(origin)))
    results: dict[str, Any] = {"model": str(model)}
    _timed(results, "bpb", lambda: {
        name: bits_per_byte_by_source(m, tok, shards, eval.bpb_tokens, own)
        for name, m, own in models})
    if eval.mcq_data:
        shots = read_questions(Path(eval.mcq_dev))[: eval.mcq_shots] \
            if eval.mcq_dev and eval.mcq_shots else []
        questions = read_questions(Path(eval.mcq_data))
        _timed(results, "mcq", lambda: {name: evaluate_mcq(m, own or tok, questions, shots)
                                        for name, m, own in models})
    if queries is not None:
        records = heldout_questions(queries, corpus, True)
        atomic_write_jsonl(out / "heldout_queries.jsonl", records)
        items = [QAItem(str(r["question"]), str(r["answer"])) for r in records]
        items = items[: eval.qa_limit or None]
        grounding = Grounding.open(index)
        _timed(results, "qa", lambda: evaluate_qa(assistant_model, chat, grounding, items,
                                                  assistant, eval.samples))
    write_report_pair(out, results, eval_markdown(results))
    return {"headline": headline(results), "outputs": {"results": str(out / "report.json"),
                                                       "report": str(out / "report.md")},
            **{k: results[k] for k in ("bpb", "mcq", "qa") if k in results}}


def headline(results: dict[str, Any]) -> str:
    parts = []
    if "qa" in results:
        qa = results["qa"]
        parts.append(f"QA char F1 with RAG {qa['rag']['char_f1']:.3f}, without "
                     f"{qa['no_rag']['char_f1']:.3f}, retrieval-only "
                     f"{qa['baseline']['char_f1']:.3f}")
    if "mcq" in results:
        parts.append(f"MCQ acc {results['mcq']['assistant']['acc']:.3f} (random "
                     f"{results['mcq']['assistant']['random_baseline']:.3f})")
    return "; ".join(parts)


# the models the eval stage scores, as its tables name them
MODEL_LABELS = {"origin": "open base (before)", "base": "base model", "assistant": "assistant"}


def eval_tables(results: dict[str, Any]) -> list[str]:
    """The eval section shared by the eval report and the run's report card."""
    md = []
    if "qa" in results:
        qa = results["qa"]
        md += [f"### Domain QA ({qa['questions']} questions of held-out contracts; "
               f"{qa['answered_with_rag']} answered from retrieved passages)", "",
               markdown_table(["system", "char F1", "ROUGE-L"],
                              [["assistant + RAG", qa["rag"]["char_f1"], qa["rag"]["rouge_l"]],
                               ["assistant alone", qa["no_rag"]["char_f1"],
                                qa["no_rag"]["rouge_l"]],
                               ["retrieval-only baseline (best sentence of top passage)",
                                qa["baseline"]["char_f1"], qa["baseline"]["rouge_l"]]]), "",
               f"RAG vs the baseline: {qa['rag']['char_f1'] - qa['baseline']['char_f1']:+.3f} "
               f"char F1; RAG vs no RAG: {qa['rag']['char_f1'] - qa['no_rag']['char_f1']:+.3f} "
               "(the assistant is worth generating when both are positive).", ""]
    bpb = results["bpb"]
    names = [n for n in MODEL_LABELS if n in bpb]
    md += ["### Held-out bits per byte by source", "",
           markdown_table(["source", "bytes", *(MODEL_LABELS[n] for n in names)],
                          [[s, v["bytes"], *(bpb[n][s]["bits_per_byte"] for n in names)]
                           for s, v in bpb["base"].items()]), ""]
    if "origin" in bpb:
        md += ["Continued pretraining moved bits per byte by "
               + ", ".join(f"{s} {bpb['base'][s]['bits_per_byte'] - v['bits_per_byte']:+.3f}"
                           for s, v in bpb["origin"].items())
               + " (negative: better; a general source that rises is forgetting).", ""]
    if "mcq" in results:
        rows = [[name, r["questions"], r["shots"], r["acc"], r["acc_norm"], r["random_baseline"]]
                for name, r in results["mcq"].items()]
        md += ["### Multiple choice (log-likelihood of each option)", "",
               markdown_table(["model", "questions", "shots", "acc", "acc_norm", "random"],
                              rows), ""]
    return md


def eval_markdown(results: dict[str, Any]) -> str:
    md = ["# Evaluation", "", f"Model: `{results['model']}`.", "", *eval_tables(results)]
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in results["seconds"].items())
    return "\n".join([*md, f"Time: {timing}."])
