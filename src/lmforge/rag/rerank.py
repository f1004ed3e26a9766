"""The domain reranker at query time, and the training data it learns from.

No reranker with bundled weights exists, and the general embedder is weak on insurance clauses,
so lmforge trains its own (``lmforge rag train-reranker``; the model is
``model/cross_encoder.py``, the objective ``train/rerank.py``). Here: the features each
candidate carries (the fused retrievers' scores and ranks, and how much of the question's
IDF-weighted terms, bigrams and words the passage covers), the question-passage token sequences,
and the training groups built from the user's question-passage pairs with hard negatives from
the retrievers. Questions are split by contract (``group_field``; the split is
``pipeline/retrieval_data.py``'s): the reranker never trains on the held-out contracts, and
``rag eval`` measures on exactly those.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from lmforge.config import RerankerConfig
from lmforge.data import jsonl_records
from lmforge.model import CrossEncoder, RerankGroup, score_group
from lmforge.rag.index import RagIndex, RagIndexError
from lmforge.rag.keyword import LexicalFeatures
from lmforge.rag.retrieve import Hit, Retriever
from lmforge.tokenizer import IM_START, encode_text, load_tokenizer

RETRIEVAL_FEATURES = ("rrf", "dense", "keyword", "dense_rank", "keyword_rank", "domain",
                      "domain_rank")
COVERAGE = ("idf_coverage", "bigram_coverage", "word_coverage")
FEATURES = (*RETRIEVAL_FEATURES, *COVERAGE, "log_length", "longest_match",
            *(f"document_{name}" for name in COVERAGE))
FOLDER = "reranker"
TRAINING_FILE = "training.json"  # the split of the labelled questions retrieval trained on


@dataclass
class Query:
    question: str
    gold: str  # document id of the passage that answers it
    group: str  # e.g. the contract: the unit of the train / held-out split


def read_queries(path: Path, group_field: str = "contract") -> list[Query]:
    """Queries in the bundled format: ``question``, ``gold_pid`` (and the group field)."""
    return [Query(str(r["question"]), str(r["gold_pid"]), str(r.get(group_field, r["gold_pid"])))
            for r in jsonl_records(path, ("question", "gold_pid"))]


def feature_matrix(hits: Sequence[Hit], question: str, lexical: LexicalFeatures) -> np.ndarray:
    terms = set(lexical.analyzer(question))
    rows = [[hit.features.get(name, 0.0) * (60.0 if name == "rrf" else 1.0)
             for name in RETRIEVAL_FEATURES]
            + lexical(terms, hit.chunk.searchable, question, hit.doc.doc_id) for hit in hits]
    return np.asarray(rows, dtype=np.float32).reshape(len(hits), len(FEATURES))


def pair_ids(tok: Tokenizer, question: str, passage: str, max_len: int) -> list[int]:
    """Question, a separator, then as much of the passage as fits. Both are untrusted text:
    a ``<|im_start|>`` inside either is plain text, so neither can forge the separator."""
    q = encode_text(tok, question)[: max_len // 3]
    sep = tok.token_to_id(IM_START)
    if sep is None:
        raise ValueError(f"the reranker's tokenizer has no {IM_START} token")
    p = encode_text(tok, passage)
    return [*q, sep, *p][:max_len]


def model_stamp(folder: Path) -> tuple[tuple[str, int, int, int], ...]:
    """What changes when the reranker in index folder ``folder`` is (re)written: every file of
    its model folder, so a load that raced a write is retried once the write moves on."""
    try:
        entries = sorted((folder / FOLDER / "model").iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return ()
    stamps = []
    for path in entries:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        stamps.append((path.name, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


class Reranker:
    def __init__(self, model: CrossEncoder, tok: Tokenizer, index: RagIndex,
                 meta: dict[str, Any]) -> None:
        self.model, self.tok, self.meta = model, tok, meta
        self.folder = index.folder  # the index it was loaded from (its statistics come per call)
        self.depth = int(meta["candidates"])
        self.enabled = bool(meta.get("enabled", True))
        self.max_len = int(meta["max_len"])

    @classmethod
    def load(cls, index: RagIndex) -> Reranker | None:
        folder = index.folder / FOLDER / "model"
        if not (folder / "cross_encoder.json").exists():
            return None
        model, meta = CrossEncoder.load(folder)
        if list(meta.get("features", [])) != list(FEATURES):
            raise RagIndexError(f"{folder}: the reranker was trained on features "
                                f"{meta.get('features')}, this version computes {list(FEATURES)}"
                                "; re-run rag train-reranker")
        return cls(model, load_tokenizer(folder), index, meta)

    def scores(self, question: str, hits: Sequence[Hit], lexical: LexicalFeatures
               ) -> np.ndarray:
        """``lexical``: the statistics of the reader (``RagIndex.lexical_for``)."""
        ids = ([pair_ids(self.tok, question, h.chunk.searchable, self.max_len) for h in hits]
               if self.model.use_text else [[0]] * len(hits))  # the evidence head reads no text
        group = RerankGroup(ids, feature_matrix(hits, question, lexical),
                            np.zeros(len(hits), dtype=bool), [h.doc.doc_id for h in hits])
        return score_group(self.model, group, torch.device("cpu"))

    def rerank(self, question: str, hits: list[Hit], lexical: LexicalFeatures) -> list[Hit]:
        """Reorder the top candidates; a reranker that did not beat fusion on validation
        questions when it was trained leaves the order alone. ``lexical``: the reader's
        coverage statistics (their tenant's for users, the whole index's for operators)."""
        head, tail = hits[: self.depth], hits[self.depth :]
        if not head or not self.enabled:
            return hits
        scores = self.scores(question, head, lexical)
        for hit, score in zip(head, scores, strict=True):
            hit.features["rerank"] = float(score)
            hit.score = float(score)
        return sorted(head, key=lambda h: -h.score) + tail


def rerank_groups(index: RagIndex, queries: Sequence[Query], tok: Tokenizer,
                  config: RerankerConfig) -> list[RerankGroup]:
    """Question groups exactly as retrieval returns them (the index's chosen fusion). The
    gold passage is never forced into a list that missed it: its retrieval features would be
    missing, and the model would learn that missing evidence marks the answer (it did, and it
    looked great on validation built the same way, and lost on real held-out lists). Lists
    without the gold passage teach nothing and are skipped in training; in evaluation they
    count as misses. Questions whose gold document is not in the index are dropped."""
    retriever = Retriever(index)
    lexical = index.lexical
    groups = []
    for query in queries:
        if query.gold not in index.docs:
            continue
        hits = retriever.candidates(query.question)[: config.candidates]
        groups.append(RerankGroup(
            [pair_ids(tok, query.question, h.chunk.searchable, config.train.seq_len) for h in hits],
            feature_matrix(hits, query.question, lexical),
            np.array([h.doc.doc_id == query.gold for h in hits], dtype=bool),
            [h.doc.doc_id for h in hits], query.group))
    return groups


def trained_groups(index: RagIndex) -> set[str] | None:
    """Groups (contracts) whose labelled questions trained or tuned the index's retrieval
    (the split the training jobs wrote); None when nothing was trained."""
    path = index.folder / TRAINING_FILE
    if not path.exists():
        return None
    return set(json.loads(path.read_text(encoding="utf-8")).get("trained_groups", []))
