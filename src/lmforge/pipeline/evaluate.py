"""The eval stage of ``lmforge run``: held-out bits per byte per source (base model and
assistant), the multiple-choice benchmark, and domain QA on the questions of the contracts the
data stage held out, with and without RAG, beside the retrieval-only baseline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_jsonl
from lmforge.config import RecipeConfig
from lmforge.reporting import markdown_table, write_report_pair


def _timed(results: dict[str, Any], name: str, work: Any) -> None:
    start = time.perf_counter()
    results[name] = work()
    results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)


def evaluate_run(recipe: RecipeConfig, model_dir: Path, out: Path) -> dict[str, Any]:
    from lmforge.data.domain_qa import heldout_questions
    from lmforge.eval import evaluate_mcq, read_questions
    from lmforge.eval.bpb import bits_per_byte_by_source
    from lmforge.eval.qa import QAItem, evaluate_qa
    from lmforge.model import load_model
    from lmforge.prompts import system_message
    from lmforge.rag import Grounding, RagIndex, Reranker, Retriever
    from lmforge.tokenizer import load_tokenizer

    config, run = recipe.eval, Path(recipe.run.out_dir)
    model, tok = load_model(model_dir).eval(), load_tokenizer(model_dir)
    base_dir = run / "pretrain" / "model"
    base = load_model(base_dir).eval()
    shards = run / "data" / "shards"
    results: dict[str, Any] = {"model": str(model_dir)}
    _timed(results, "bpb", lambda: {
        name: bits_per_byte_by_source(m, tok, shards, config.bpb_tokens)
        for name, m in (("base", base), ("assistant", model))})
    if config.mcq_data:
        shots = read_questions(Path(config.mcq_dev))[: config.mcq_shots] \
            if config.mcq_dev and config.mcq_shots else []
        questions = read_questions(Path(config.mcq_data))
        _timed(results, "mcq", lambda: {"base": evaluate_mcq(base, tok, questions, shots),
                                        "assistant": evaluate_mcq(model, tok, questions, shots)})
    if recipe.sft.qa_queries:
        records = heldout_questions(Path(recipe.sft.qa_queries), run / "data" / "corpus", True)
        atomic_write_jsonl(out / "heldout_queries.jsonl", records)
        items = [QAItem(str(r["question"]), str(r["answer"])) for r in records]
        items = items[: config.qa_limit or None]
        index = RagIndex.open(run / "rag")
        grounding = Grounding(Retriever(index, Reranker.load(index)))
        system = system_message(recipe.sft.assistant_name, recipe.sft.assistant_owner)
        _timed(results, "qa", lambda: evaluate_qa(model, tok, grounding, items, system,
                                                  config.max_new_tokens, config.samples,
                                                  recipe.sampling))
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
    md += ["### Held-out bits per byte by source", "",
           markdown_table(["source", "bytes", "base model", "assistant"],
                          [[s, v["bytes"], v["bits_per_byte"],
                            bpb["assistant"][s]["bits_per_byte"]]
                           for s, v in bpb["base"].items()]), ""]
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
