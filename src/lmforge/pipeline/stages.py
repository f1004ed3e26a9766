"""The stages of ``lmforge run``, in order: what each reads, what shapes it, and the library
call that does the work. Every body returns a summary with a one-line ``headline`` and the
``outputs`` a user looks for; the report card is built from these summaries and the stages'
own reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_jsonl
from lmforge.config import RecipeConfig, write_resolved
from lmforge.pipeline.run import Stage


def run_dir(recipe: RecipeConfig) -> Path:
    return Path(recipe.run.out_dir)


def final_model(recipe: RecipeConfig) -> Path:
    return run_dir(recipe) / "dpo" / "model"


def _data(recipe: RecipeConfig, resume: bool) -> dict[str, Any]:
    from lmforge.data import prepare

    out = run_dir(recipe) / "data"
    report = prepare(recipe.data, out, recipe.run.seed)
    write_resolved(recipe, out)
    return {"headline": f"{report['train_docs']:,} training documents, {report['val_docs']:,} "
                        "held out", "outputs": {"corpus": str(out / "corpus"),
                                                "report": str(out / "report.md")}}


def _tokenizer(recipe: RecipeConfig, resume: bool) -> dict[str, Any]:
    from lmforge.tokenizer.train import train_tokenizer

    out = run_dir(recipe) / "tokenizer"
    report = train_tokenizer(recipe.tokenizer, run_dir(recipe) / "data" / "corpus", out)
    write_resolved(recipe, out)
    rates = ", ".join(f"{k} {v['chars_per_token']:.2f}" for k, v in report["held_out"].items())
    return {"headline": f"vocab {report['vocab_size']:,}; characters per token {rates}",
            "outputs": {"tokenizer": str(out / "tokenizer.json"),
                        "report": str(out / "report.md")}}


def _shards(recipe: RecipeConfig, resume: bool) -> dict[str, Any]:
    return write_shards(recipe, run_dir(recipe) / "tokenizer")


def write_shards(recipe: RecipeConfig, tokenizer_dir: Path) -> dict[str, Any]:
    from lmforge.data import tokenize_corpus

    data = run_dir(recipe) / "data"
    index = tokenize_corpus(data, tokenizer_dir, recipe.data.shards)
    write_resolved(recipe, data / "shards")
    counts = ", ".join(f"{s} {v['tokens']:,}" for s, v in index["splits"].items())
    return {"headline": f"tokens: {counts}", "outputs": {"shards": str(data / "shards")}}


def _trained(report: dict[str, Any], out: Path) -> dict[str, Any]:
    if not report:  # a non-main process of a distributed run: rank 0 reports
        return {}
    final = ", ".join(f"{k} {v:.3f}" for k, v in report["final"].items())
    return {"headline": f"{report['steps']} steps, {report['tokens_per_second']:,.0f} tokens/s; "
                        f"{final}", "outputs": {"model": str(out / "model"),
                                                "report": str(out / "report.md"),
                                                "loss curve": str(out / "loss.png")}}


def _pretrain(recipe: RecipeConfig, resume: bool) -> dict[str, Any]:
    from lmforge.train.stages import pretrain

    return _trained(pretrain(recipe, resume=resume), run_dir(recipe) / "pretrain")


def _post(stage: str) -> Any:
    def body(recipe: RecipeConfig, resume: bool) -> dict[str, Any]:
        from lmforge.train import post

        report = getattr(post, stage)(recipe, resume=resume)
        return _trained(report, run_dir(recipe) / stage)

    return body


def _rag(recipe: RecipeConfig, resume: bool) -> dict[str, Any]:
    from lmforge.data.domain_qa import heldout_questions
    from lmforge.pipeline.reranker import train_reranker
    from lmforge.rag import RagIndex

    out = run_dir(recipe) / "rag"
    if not recipe.rag.documents:
        raise ValueError("rag.documents: nothing to index; list the files or folders to answer "
                         "from, e.g. documents = [\"data/insurance/passages.jsonl\"]")
    index = RagIndex.create(out, recipe.rag)
    report = index.sync([Path(p) for p in recipe.rag.documents], prune=True)
    summary: dict[str, Any] = {
        "documents": len(index.docs), "chunks": len(index.chunks), "added": report.added,
        "unchanged": report.unchanged, "embedded": report.embedded, "problems": report.problems}
    outputs = {"index": str(out)}
    if recipe.rag.reranker_queries:
        queries = atomic_write_jsonl(out / "reranker_queries.jsonl", heldout_questions(
            Path(recipe.rag.reranker_queries), run_dir(recipe) / "data" / "corpus", False))
        reranker = train_reranker(out, queries, recipe.rag.reranker, recipe.run.seed)
        summary["reranker"] = {"enabled": reranker["enabled"], "held_out": reranker["held_out"]}
        outputs["reranker report"] = str(out / "reranker" / "report.md")
    summary["headline"] = (f"{summary['documents']:,} documents, {summary['chunks']:,} chunks "
                           f"({summary['embedded']:,} embedded now)")
    summary["outputs"] = outputs
    return summary


def _eval(recipe: RecipeConfig, resume: bool) -> dict[str, Any]:
    from lmforge.pipeline.evaluate import evaluate_run

    return evaluate_run(recipe, final_model(recipe), run_dir(recipe) / "eval")


def _export(recipe: RecipeConfig, resume: bool) -> dict[str, Any]:
    from lmforge.export import export_hf

    out = export_hf(final_model(recipe), run_dir(recipe) / "export" / "hf")
    return {"headline": "Hugging Face folder (transformers, vLLM, llama.cpp)",
            "outputs": {"hf": str(out)}}


def _files(*paths: str) -> list[str]:
    return [p for p in paths if p]


def _sources(recipe: RecipeConfig) -> list[str]:
    return [s.path for s in recipe.data.sources]


def _sft_inputs(recipe: RecipeConfig) -> list[str]:
    s = recipe.sft
    return _files(*s.chat_files, s.identity_file, s.qa_queries, s.qa_passages)


def _sft_settings(recipe: RecipeConfig) -> Any:
    return {"sft": recipe.sft, "seed": recipe.run.seed}


def _dpo_settings(recipe: RecipeConfig) -> Any:
    return {"dpo": recipe.dpo, "sft": recipe.sft, "seed": recipe.run.seed}


def print_summary(stage: str, summary: dict[str, Any]) -> None:
    """What a stage command prints: its headline and where its outputs are."""
    if summary:
        print(f"{stage}: {summary['headline']}")
        for label, path in summary["outputs"].items():
            print(f"  {label}: {path}")


STAGES = [
    Stage("data", "data", (), lambda r: {"data": r.data, "seed": r.run.seed}, _sources, _data),
    Stage("tokenizer", "tokenizer", ("data",), lambda r: r.tokenizer,
          lambda r: _files(r.tokenizer.terms_file), _tokenizer),
    Stage("shards", "data/shards", ("data", "tokenizer"), lambda r: r.data.shards,
          lambda r: [], _shards),
    Stage("pretrain", "pretrain", ("shards",),
          lambda r: {"model": r.model, "train": r.pretrain, "seed": r.run.seed},
          lambda r: _files(r.pretrain.init_from), _pretrain),
    Stage("sft", "sft", ("pretrain", "data"), _sft_settings, _sft_inputs, _post("sft")),
    Stage("dpo", "dpo", ("sft", "data"), _dpo_settings,
          lambda r: [*r.dpo.pair_files, *_sft_inputs(r)], _post("dpo")),
    Stage("rag", "rag", ("data",), lambda r: {"rag": r.rag, "seed": r.run.seed},
          lambda r: [*r.rag.documents, *_files(r.rag.reranker_queries)], _rag),
    Stage("eval", "eval", ("dpo", "rag", "shards"),
          lambda r: {"eval": r.eval, "sft": r.sft, "sampling": r.sampling},
          lambda r: _files(r.eval.mcq_data, r.eval.mcq_dev, r.sft.qa_queries), _eval),
    Stage("export", "export", ("dpo",), lambda r: {}, lambda r: [], _export),
]

# every stage body by name, for the single-stage commands (``lmforge sft``); the reward model
# is trained on request only, outside ``lmforge run``
BODIES = {stage.name: stage.run for stage in STAGES} | {"rm": _post("rm")}
