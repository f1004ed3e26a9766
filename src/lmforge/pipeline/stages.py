"""The stages of ``lmforge run``, in order. Each is a body, a plain function of the config
sections and paths it needs, and the arguments a recipe and the run's layout give it (what the
fingerprint hashes). Every body returns a summary with a one-line ``headline`` and the
``outputs`` a user looks for; the report card is built from these summaries and the stages' own
reports."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_jsonl
from lmforge.config import (
    AssistantConfig,
    DataConfig,
    ExportConfig,
    ModelConfig,
    PreferenceConfig,
    RagConfig,
    RecipeConfig,
    SFTConfig,
    ShardConfig,
    TokenizerConfig,
    TrainConfig,
)
from lmforge.data import (
    heldout_contracts,
    heldout_questions,
    kept_out,
    preference_examples,
    prepare,
    sft_examples,
    tokenize_corpus,
    validation_contracts,
)
from lmforge.export import export_gguf, export_hf, write_modelfile
from lmforge.pipeline.decoding import decoding_stage
from lmforge.pipeline.evaluate import evaluate_run
from lmforge.pipeline.kto import kto_stage
from lmforge.pipeline.layout import RunLayout
from lmforge.pipeline.retrieval import train_retrieval
from lmforge.pipeline.rl import rl_args, rl_stage
from lmforge.pipeline.run import Stage
from lmforge.rag import RagIndex
from lmforge.tokenizer import base_tokenizer, train_tokenizer
from lmforge.train import dpo, pretrain, reward_model, sft


def data_stage(data: DataConfig, out: Path, seed: int) -> dict[str, Any]:
    report = prepare(data, out, seed)
    return {"headline": f"{report['train_docs']:,} training documents, {report['val_docs']:,} "
                        "held out", "outputs": {"corpus": str(out / "corpus"),
                                                "report": str(out / "report.md")}}


def tokenizer_stage(tokenizer: TokenizerConfig, corpus: Path, out: Path,
                    base: Path | None = None) -> dict[str, Any]:
    """Train a tokenizer on the corpus, or, with a ``base`` model, take the base's own and
    extend it with the domain terms."""
    outputs = {"tokenizer": str(out / "tokenizer.json"), "report": str(out / "report.md")}
    if base is not None:
        report = base_tokenizer(tokenizer, corpus, base, out)
        held = report["held_out"]
        return {"headline": f"{base.name}'s tokenizer + {report['terms']['added']} domain terms "
                            f"(vocab {report['vocab_size_after']:,}); characters per token on "
                            f"held-out domain text {held['chars_per_token_before']:.2f} -> "
                            f"{held['chars_per_token_after']:.2f}", "outputs": outputs}
    report = train_tokenizer(tokenizer, corpus, out)
    rates = ", ".join(f"{k} {v['chars_per_token']:.2f}" for k, v in report["held_out"].items())
    return {"headline": f"vocab {report['vocab_size']:,}; characters per token {rates}",
            "outputs": outputs}


def shards_stage(shards: ShardConfig, data: Path, tokenizer: Path, out: Path) -> dict[str, Any]:
    """``data`` is the data stage's folder (its corpus and report)."""
    index = tokenize_corpus(data, tokenizer, out, shards)
    counts = ", ".join(f"{s} {v['tokens']:,}" for s, v in index["splits"].items())
    return {"headline": f"tokens: {counts}", "outputs": {"shards": str(out)}}


def _trained(report: dict[str, Any], out: Path) -> dict[str, Any]:
    if not report:  # a non-main process of a distributed run: rank 0 reports
        return {}
    final = ", ".join(f"{k} {v:.3f}" for k, v in report["final"].items())
    return {"headline": f"{report['steps']} steps, {report['tokens_per_second']:,.0f} tokens/s; "
                        f"{final}", "outputs": {"model": str(out / "model"),
                                                "report": str(out / "report.md"),
                                                "loss curve": str(out / "loss.png")}}


def pretrain_stage(model: ModelConfig, train: TrainConfig, tokenizer: Path, shards: Path,
                   out: Path, seed: int, resume: bool = False) -> dict[str, Any]:
    return _trained(pretrain(model, train, tokenizer, shards, out, seed, resume), out)


def sft_stage(config: SFTConfig, assistant: AssistantConfig, corpus: Path, base: Path, out: Path,
              seed: int, resume: bool = False) -> dict[str, Any]:
    kept = kept_out(config, corpus, seed)
    conversations, stats = sft_examples(config, assistant, kept.all, seed)
    if config.qa_queries:  # kept out for evaluation / for choosing the decoding
        stats |= {"heldout_contracts": len(kept.heldout),
                  "validation_contracts": len(kept.validation)}
    return _trained(sft(config, conversations, stats, base, out, seed, resume), out)


def _preference_stage(train: Any) -> Any:
    """The body of a preference-training stage (DPO, the reward model): pairs, then ``train``."""
    def body(preference: PreferenceConfig, sft: SFTConfig, assistant: AssistantConfig,
             corpus: Path, base: Path, out: Path, seed: int, resume: bool = False
             ) -> dict[str, Any]:
        pairs, stats = preference_examples(preference, sft, assistant,
                                           kept_out(sft, corpus, seed).all, seed)
        return _trained(train(preference, pairs, stats, base, out, seed, resume), out)

    return body


def rag_stage(rag: RagConfig, corpus: Path, out: Path, seed: int,
              decoding: tuple[str, float] = ("", 0.0), base: Path | None = None
              ) -> dict[str, Any]:
    """``decoding``: SFT's QA file and the share of its training-side contracts kept out to
    choose the decoding on; retrieval does not train on their questions either. ``base``: the
    model the embedder and the reranker start from (``rag.encoders_from = "pretrain"``)."""
    if not rag.documents:
        raise ValueError("rag.documents: nothing to index; list the files or folders to answer "
                         "from, e.g. documents = [\"data/insurance/passages.jsonl\"]")
    index = RagIndex.create(out, rag)
    report = index.sync([Path(p) for p in rag.documents], prune=True)
    summary: dict[str, Any] = {
        "documents": len(index.docs), "chunks": len(index.chunks), "added": report.added,
        "unchanged": report.unchanged, "embedded": report.embedded, "problems": report.problems}
    outputs = {"index": str(out)}
    if rag.train_queries and rag.train:
        kept = validation_contracts(Path(decoding[0]), heldout_contracts(corpus), decoding[1],
                                    seed) if decoding[0] and decoding[1] else set()
        queries = atomic_write_jsonl(out / "train_queries.jsonl", [
            r for r in heldout_questions(Path(rag.train_queries), corpus, False)
            if r["contract"] not in kept])
        trained = train_retrieval(out, queries, starting_from(rag, base), seed)
        summary["retrieval"] = trained
        outputs |= {f"{part} report": str(out / part / "report.md")
                    for part in ("embedder", "reranker") if part in rag.train}
    summary["headline"] = (f"{summary['documents']:,} documents, {summary['chunks']:,} chunks "
                           f"({summary['embedded']:,} embedded now)")
    summary["outputs"] = outputs
    return summary


def starting_from(rag: RagConfig, base: Path | None) -> RagConfig:
    """The retrieval encoders start from ``base`` unless their own ``init_from`` says
    otherwise."""
    if base is None:
        return rag
    return replace(rag, embedder=replace(rag.embedder,
                                         init_from=rag.embedder.init_from or str(base)),
                   reranker=replace(rag.reranker,
                                    init_from=rag.reranker.init_from or str(base)))


def export_stage(model: Path, out: Path, gguf: Path, export: ExportConfig,
                 assistant: AssistantConfig) -> dict[str, Any]:
    export_hf(model, out)
    if export.gguf == "none":
        return {"headline": "Hugging Face folder (transformers, vLLM)", "outputs": {"hf": str(out)}}
    written = export_gguf(model, gguf, export.gguf)
    modelfile = write_modelfile(model, written, assistant.system, assistant.sampling)
    return {"headline": f"Hugging Face folder (transformers, vLLM) and {export.gguf} GGUF "
                        "(llama.cpp, Ollama)",
            "outputs": {"hf": str(out), "gguf": str(gguf), "modelfile": str(modelfile)},
            "gguf_mb": round(written.bytes / 1e6, 1)}


def _start(init_from: str, default: Path) -> Path:
    return Path(init_from) if init_from else default


def _preference_args(section: str, after: str) -> Any:
    def args(r: RecipeConfig, layout: RunLayout) -> dict[str, Any]:
        config: PreferenceConfig = getattr(r, section)
        return {"preference": config, "sft": r.sft, "assistant": r.assistant,
                "corpus": layout.corpus,
                "base": _start(config.train.init_from, layout.model(after)),
                "out": layout.stage(section), "seed": r.run.seed}

    return args


def _eval_args(r: RecipeConfig, layout: RunLayout) -> dict[str, Any]:
    return {"eval": r.eval, "assistant": r.assistant, "model": layout.assistant,
            "base": layout.model("pretrain"), "shards": layout.shards, "corpus": layout.corpus,
            "index": layout.rag, "queries": Path(r.sft.qa_queries) if r.sft.qa_queries else None,
            "out": layout.stage("eval"), **({"origin": Path(r.model.base)} if r.model.base else {})}


STAGES = [
    Stage("data", data_stage, lambda r, layout: {"data": r.data, "out": layout.stage("data"),
                                                 "seed": r.run.seed}),
    Stage("tokenizer", tokenizer_stage, lambda r, layout: {
        "tokenizer": r.tokenizer, "corpus": layout.corpus, "out": layout.tokenizer,
        **({"base": Path(r.model.base)} if r.model.base else {})}),
    Stage("shards", shards_stage, lambda r, layout: {
        "shards": r.data.shards, "data": layout.stage("data"), "tokenizer": layout.tokenizer,
        "out": layout.shards}),
    Stage("pretrain", pretrain_stage, lambda r, layout: {
        "model": r.model, "train": r.pretrain, "tokenizer": layout.tokenizer,
        "shards": layout.shards, "out": layout.stage("pretrain"), "seed": r.run.seed},
        resumable=True),
    Stage("sft", sft_stage, lambda r, layout: {
        "config": r.sft, "assistant": r.assistant, "corpus": layout.corpus,
        "base": _start(r.sft.train.init_from, layout.model("pretrain")),
        "out": layout.stage("sft"), "seed": r.run.seed}, resumable=True),
    Stage("dpo", _preference_stage(dpo), _preference_args("dpo", "sft"), resumable=True),
    Stage("rag", rag_stage, lambda r, layout: {
        "rag": r.rag, "corpus": layout.corpus, "out": layout.rag, "seed": r.run.seed,
        "decoding": (r.sft.qa_queries, r.sft.decoding_val_fraction),
        **({"base": layout.model("pretrain")} if r.rag.encoders_from == "pretrain" else {})}),
    Stage("decoding", decoding_stage, lambda r, layout: {
        "sft": r.sft, "assistant": r.assistant, "model": layout.trained, "index": layout.rag,
        "corpus": layout.corpus, "out": layout.stage("decoding"), "seed": r.run.seed}),
    Stage("eval", evaluate_run, _eval_args),
    Stage("export", export_stage, lambda r, layout: {
        "model": layout.assistant, "out": layout.hf_export,
        "gguf": layout.gguf_export(r.export.gguf), "export": r.export,
        "assistant": r.assistant}),
]

# every stage by name, for the single-stage commands (``lmforge sft``); the reward model is
# trained on request only, outside ``lmforge run``
BY_NAME = {stage.name: stage for stage in STAGES} | {
    "rm": Stage("rm", _preference_stage(reward_model), _preference_args("rm", "sft"),
                resumable=True),
    # KTO on the users' ratings of the trained assistant
    "kto": Stage("kto", kto_stage, lambda r, layout: {
        "config": r.kto, "base": _start(r.kto.train.init_from, layout.trained),
        "out": layout.stage("kto"), "seed": r.run.seed}, resumable=True),
    # on-policy RL from the trained assistant: PPO with the rm stage's reward model, GRPO with
    # rewards the domain verifies (exam letters, cited gold passages)
    "ppo": Stage("ppo", rl_stage("ppo"), rl_args("ppo"), resumable=True),
    "grpo": Stage("grpo", rl_stage("grpo"), rl_args("grpo"), resumable=True)}


def print_summary(stage: str, summary: dict[str, Any]) -> None:
    """What a stage command prints: its headline and where its outputs are."""
    if summary:
        print(f"{stage}: {summary['headline']}")
        for label, path in summary["outputs"].items():
            print(f"  {label}: {path}")
