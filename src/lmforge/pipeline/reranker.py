"""``lmforge rag train-reranker``: the index's candidates (rag) become training groups for the
cross-encoder, trained by the shared loop (train), and the result is stored with the index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from lmforge.atomic import atomic_dir, atomic_write_text
from lmforge.config import RerankerConfig, TokenizerConfig, write_resolved
from lmforge.model import RerankGroup
from lmforge.rag import RERANKER_FEATURES, RERANKER_FOLDER, RagIndex, read_queries, training_groups
from lmforge.reporting import markdown_table
from lmforge.tokenizer import load_tokenizer, train_bpe
from lmforge.train import baseline_metrics, train_cross_encoder


def reranker_tokenizer(index: RagIndex, config: RerankerConfig) -> Tokenizer:
    """The init model's tokenizer, or a small BPE trained on the index's own text."""
    if config.init_from:
        return load_tokenizer(Path(config.init_from))
    texts = [c.text for c in index.chunks.values()]
    return train_bpe(texts, TokenizerConfig(vocab_size=config.vocab_size), "cjk", [],
                     length=len(texts), show_progress=False)


def train_reranker(index_dir: Path, queries_path: Path, config: RerankerConfig, seed: int = 0,
                   show_progress: bool = True) -> dict[str, Any]:
    index = RagIndex.open(index_dir)
    out = index.folder / RERANKER_FOLDER
    tok = reranker_tokenizer(index, config)
    queries = read_queries(queries_path, config.group_field)
    train, val, stats = training_groups(index, queries, tok, config, seed)
    if not train or not val:
        raise ValueError(f"{queries_path}: need questions in both the training and held-out "
                         f"{config.group_field}s (got {len(train)} and {len(val)})")
    model, trained = train_cross_encoder(train, val, tok, config, out, seed,
                                         RERANKER_FEATURES.index("rrf"),
                                         show_progress=show_progress)
    meta = {"features": list(RERANKER_FEATURES), "candidates": config.candidates,
            "enabled": trained["enabled"],
            "max_len": config.train.seq_len, "group_field": config.group_field,
            "trained_groups": sorted({q.group for q in queries} - set(stats["held_out_groups"]))}
    with atomic_dir(out / "model") as folder:  # a running server never loads half a model
        model.save(folder, meta)
        tok.save(str(folder / "tokenizer.json"))
    write_resolved(config, out)
    return write_report(out, stats, trained, val)


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
