"""``lmforge rag train-reranker``: the index's candidates (rag) become training groups for the
cross-encoder, trained by the shared loop (train), and the result is stored with the index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_dir, atomic_write_text
from lmforge.config import RagConfig, write_resolved
from lmforge.model import RerankGroup
from lmforge.pipeline.retrieval_data import Split, glossary_terms, own_tokenizer
from lmforge.rag import (
    RERANKER_FEATURES,
    RERANKER_FOLDER,
    RagIndex,
    rerank_groups,
    synthetic_queries,
)
from lmforge.reporting import markdown_table
from lmforge.train import baseline_metrics, train_cross_encoder


def train_reranker(index_dir: Path, split: Split, rag: RagConfig, seed: int,
                   show_progress: bool = True) -> dict[str, Any]:
    """Groups of the training questions (and, with ``rag.reranker_synthetic``, of synthetic
    questions of every chunk) over the index's chosen fusion; the validation questions decide
    whether the text model and the reranker are kept; the held-out ones are only reported."""
    index = RagIndex.open(index_dir)
    config = rag.reranker
    out = index.folder / RERANKER_FOLDER
    tok = own_tokenizer(index, config.init_from, config.vocab_size)
    queries = list(split.train)
    if rag.reranker_synthetic:
        queries += [p.query for p in synthetic_queries(
            index, glossary_terms(rag), rag.synthetic_per_chunk, seed, config.group_field)]
    train, validation, held = (rerank_groups(index, part, tok, config)
                               for part in (queries, split.validation, split.held_out))
    model, trained = train_cross_encoder(train, validation, held, tok, config, out, seed,
                                         RERANKER_FEATURES.index("rrf"),
                                         show_progress=show_progress)
    meta = {"features": list(RERANKER_FEATURES), "candidates": config.candidates,
            "enabled": trained["enabled"], "max_len": config.train.seq_len,
            "group_field": config.group_field,
            "trained_groups": sorted(set(split.groups("train")) | set(split.groups("validation")))}
    with atomic_dir(out / "model") as folder:  # a running server never loads half a model
        model.save(folder, meta)
        tok.save(str(folder / "tokenizer.json"))
    write_resolved(config, out)
    stats = {"train_questions": len(train), "labelled_train_questions": len(split.train),
             "validation_questions": len(validation), "held_out_questions": len(held),
             "held_out_groups": split.groups("held_out")}
    return write_report(out, stats, trained, held)


def write_report(out: Path, stats: dict[str, Any], trained: dict[str, Any],
                 val: list[RerankGroup]) -> dict[str, Any]:
    report = {**{k: v for k, v in stats.items() if k != "held_out_groups"},
              "held_out_groups": len(stats["held_out_groups"]),
              **{k: v for k, v in trained.items() if k != "held_out"},
              "held_out": {"reranker": trained["held_out"],
                           "fusion": baseline_metrics(val, RERANKER_FEATURES.index("rrf")),
                           "keyword": baseline_metrics(val, RERANKER_FEATURES.index("keyword"))}}
    rows = [[name, m["recall@1"], m["mrr"]] for name, m in report["held_out"].items()]
    inner = [[name, m["recall@1"], m["mrr"]] for name, m in trained["inner_val"].items()]
    atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(out / "report.md", "\n".join([
        "# Reranker", "", f"Trained in {trained['seconds']:.0f} s on "
        f"{trained['inner_train_questions']} questions; evaluated on "
        f"{stats['held_out_questions']} questions of {len(stats['held_out_groups'])} held-out "
        "groups it never saw (reranking the same candidate lists; a question whose gold passage "
        "retrieval missed counts as a miss).", "",
        markdown_table(["held-out ranking", "recall@1", "MRR"], rows), "",
        f"Text model kept: {trained['uses_text_model']}; reranker enabled: "
        f"{trained['enabled']} (it must beat fusion on validation questions from the training "
        f"groups, {trained['inner_val_questions']} of them, or `final` stays the fusion):", "",
        markdown_table(["scoring", "recall@1", "MRR"], inner), ""]))
    return report
