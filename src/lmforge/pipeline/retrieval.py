"""Training retrieval on an index (``lmforge rag train-embedder`` / ``tune-fusion`` /
``train-reranker``, and the rag stage of ``lmforge run``): the domain embedder, then the fusion,
then the reranker over the chosen fusion's candidates, each chosen on the same validation
questions (``pipeline/retrieval_data.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.config import RagConfig
from lmforge.pipeline.embedder import train_embedder
from lmforge.pipeline.reranker import train_reranker
from lmforge.pipeline.retrieval_data import read_split
from lmforge.rag import RagIndex, tune_fusion


def train_retrieval(index_dir: Path, queries_path: Path, rag: RagConfig, seed: int,
                    parts: list[str] | None = None, show_progress: bool = True
                    ) -> dict[str, Any]:
    """The parts of ``rag.train`` (or ``parts``) in order; a summary per part."""
    split = read_split(index_dir, queries_path, rag, seed)
    summary: dict[str, Any] = {"questions": {"train": len(split.train),
                                             "validation": len(split.validation),
                                             "held_out": len(split.held_out)}}
    for part in parts or rag.train:
        if part == "embedder":
            summary["embedder"] = train_embedder(index_dir, split, rag, seed, show_progress)
        elif part == "fusion":
            _, report = tune_fusion(RagIndex.open(index_dir), split.validation)
            summary["fusion"] = {"chosen": report["chosen"], "validation": report["rows"]}
        elif part == "reranker":
            summary["reranker"] = train_reranker(index_dir, split, rag, seed, show_progress)
        else:
            raise ValueError(f"rag.train: unknown part '{part}' (embedder, fusion, reranker)")
    return summary
