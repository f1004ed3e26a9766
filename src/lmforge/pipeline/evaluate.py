"""The eval stage of ``lmforge run``: held-out bits per byte per source (base model and
assistant), the multiple-choice benchmark, and domain QA on the questions of the contracts the
data stage held out, with and without RAG, beside the retrieval-only baseline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from lmforge.atomic import atomic_write_jsonl
from lmforge.config import AssistantConfig, EvalConfig
from lmforge.data import heldout_questions
from lmforge.eval import (
    Reframing,
    bits_per_byte_by_source,
    evaluate_mcq,
    evaluate_qa,
    read_qa,
    read_questions,
)
from lmforge.infer import read_grounding
from lmforge.model import Transformer, load_model
from lmforge.rag import Grounding
from lmforge.reporting import markdown_table, write_report_pair
from lmforge.tokenizer import document_end_id, load_chat_format, load_tokenizer


def _timed(results: dict[str, Any], name: str, work: Any, key: str | None = None) -> None:
    """``results[name] = work()`` (or ``results[name][key]``), its seconds added up by name."""
    start = time.perf_counter()
    value = work()
    if key is None:
        results[name] = value
    else:
        results.setdefault(name, {})[key] = value
    seconds = results.setdefault("seconds", {})
    seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - start, 1)


def evaluate_run(eval: EvalConfig, assistant: AssistantConfig, model: Path, base: Path,
                 shards: Path, corpus: Path, index: Path, queries: Path | None, out: Path,
                 origin: Path | None = None) -> dict[str, Any]:
    """``model`` is the assistant, ``base`` the pretrained model it started from; domain QA asks
    the ``queries`` of the contracts the data stage held out of ``corpus``. ``origin``: the
    open model continued pretraining started from, scored beside them (in its own tokenizer)
    so that what the domain gained and the general text lost are both visible. One model is
    in memory at a time, on the GPU when there is one."""
    chat = load_chat_format(model)
    tok = chat.tokenizer
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shots = read_questions(Path(eval.mcq_dev))[: eval.mcq_shots] \
        if eval.mcq_data and eval.mcq_dev and eval.mcq_shots else []
    questions = read_questions(Path(eval.mcq_data)) if eval.mcq_data else []
    folders = [*([("origin", origin)] if origin is not None else []), ("base", base),
               ("assistant", model)]
    results: dict[str, Any] = {"model": str(model)}

    def score(name: str, network: Transformer, own: Reframing | None) -> None:
        _timed(results, "bpb", lambda: bits_per_byte_by_source(
            network, tok, shards, eval.bpb_tokens, own), name)
        if questions:
            _timed(results, "mcq", lambda: evaluate_mcq(
                network, own.tok if own else tok, questions, shots), name)

    for name, folder in folders:
        network = load_model(folder, device=device).eval()
        score(name, network, Reframing(load_tokenizer(folder), document_end_id(folder))
              if name == "origin" else None)
    assistant_model = network  # the last one loaded
    if queries is not None:
        asked = atomic_write_jsonl(out / "heldout_queries.jsonl",
                                   heldout_questions(queries, corpus, True))
        items = read_qa(asked)[: eval.qa_limit or None]
        grounding = Grounding.open(index)
        _timed(results, "qa", lambda: evaluate_qa(assistant_model, chat, grounding, items,
                                                  assistant, eval.samples,
                                                  settings=read_grounding(model)))
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
# the Domain QA figures that a report may lack (from before they were measured), as named there
QA_FIGURES = {"citation_precision": "citation precision", "citation_coverage": "citation coverage",
              "unanswerable_refusal_rate": "refuses unanswerable",
              "answerable_refusal_rate": "refuses answerable"}


def eval_tables(results: dict[str, Any]) -> list[str]:
    """The eval section shared by the eval report and the run's report card."""
    md = []
    if "qa" in results:
        qa = results["qa"]
        systems = [("assistant + RAG", "rag"), ("assistant alone", "no_rag"),
                   ("retrieval-only baseline (best sentence of top passage, cited [1])",
                    "baseline")]
        md += [f"### Domain QA ({qa['questions']} questions of held-out contracts; "
               f"{qa['answered_with_rag']} answered from retrieved passages)", "",
               markdown_table(["system", "char F1", "ROUGE-L", *QA_FIGURES.values()],
                              [[label, qa[k]["char_f1"], qa[k]["rouge_l"],
                                *(figure_or_dash(qa[k].get(key)) for key in QA_FIGURES)]
                               for label, k in systems]), "",
               f"RAG vs the baseline: {qa['rag']['char_f1'] - qa['baseline']['char_f1']:+.3f} "
               f"char F1; RAG vs no RAG: {qa['rag']['char_f1'] - qa['no_rag']['char_f1']:+.3f} "
               "(the assistant is worth generating when both are positive).", "",
               *_citation_note(qa), *_refusal_note(qa), *_checked_samples(qa.get("samples", []))]
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


def figure_or_dash(value: float | None) -> float | str:
    """A figure that may be missing: no cited sentence, no unanswerable question, or a report
    from before the figure was measured."""
    return "—" if value is None else value


def _citation_note(qa: dict[str, Any]) -> list[str]:
    if "citation_threshold" not in qa:
        return []
    return [f"Citation precision: cited sentences with at least {qa['citation_threshold']:.0%} "
            "of their character bigrams in the passages they cite (character overlap, not "
            "entailment); coverage: answer sentences that cite.", ""]


def _refusal_note(qa: dict[str, Any]) -> list[str]:
    if not any(k in qa[s] for s in ("rag", "no_rag", "baseline")
               for k in ("unanswerable_refusal_rate", "answerable_refusal_rate")):
        return []
    asked = qa["rag"].get("unanswerable_questions")
    count = "" if asked is None else f"; {asked} questions"
    return ["Refuses unanswerable: the share of questions, asked with their own contract's "
            "documents hidden from retrieval, where the assistant says it does not know (as it "
            f"should{count}); refuses answerable: the share of the questions as asked that it "
            "wrongly refuses.", ""]


def _checked_samples(samples: list[dict[str, Any]], shown: int = 3) -> list[str]:
    """Up to ``shown`` RAG answers, sentence by sentence: ✓ supported by the passage it cites,
    ✗ not (or citing a missing source), · cites nothing."""
    with_checks = [s for s in samples if "citations" in s][:shown]
    if not with_checks:
        return []
    md = ["Sample RAG answers, their citations checked:", ""]
    for sample in with_checks:
        md.append(f"- {sample['question']}")
        md += [f"  - {('✓' if c['supported'] else '✗') if c['cites'] else '·'} {c['text']}"
               for c in sample["citations"]["rag"]] or ["  - (no sentence to check)"]
    return [*md, ""]


def eval_markdown(results: dict[str, Any]) -> str:
    md = ["# Evaluation", "", f"Model: `{results['model']}`.", "", *eval_tables(results)]
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in results["seconds"].items())
    return "\n".join([*md, f"Time: {timing}."])
