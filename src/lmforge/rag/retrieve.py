"""From a question to ranked passages: dense, keyword, their weighted reciprocal-rank fusion, and
the final ranking (fusion, then the trained reranker when the index has one).

RRF needs no score calibration between BM25 and cosine similarity, only ranks:
``score(c) = sum_i w_i / (k + rank_i(c))``. On the bundled insurance set, equal weights are
worse than BM25 alone (the dense model is weaker on clauses), which is why the final stage is a
reranker trained on the user's own questions (``rag/rerank.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from lmforge.rag.index import Access, ChunkInfo, DocInfo, RagIndex

Mode = Literal["dense", "keyword", "hybrid", "final"]
MODES: tuple[Mode, ...] = ("dense", "keyword", "hybrid", "final")


@dataclass
class Hit:
    chunk: ChunkInfo
    doc: DocInfo
    score: float
    features: dict[str, float] = field(default_factory=dict)


def rrf(runs: Sequence[tuple[Sequence[str], float]], k: int) -> dict[str, float]:
    """Weighted reciprocal rank fusion of ranked id lists."""
    fused: dict[str, float] = {}
    for ranked, weight in runs:
        for rank, item in enumerate(ranked, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (k + rank)
    return fused


class Retriever:
    def __init__(self, index: RagIndex, reranker: object | None = None) -> None:
        self.index = index
        self.reranker = reranker

    def candidates(self, question: str, access: Access | None = None) -> list[Hit]:
        """The fused candidate pool, each hit carrying every retriever's evidence."""
        c = self.index.config
        dense = self.index.dense(question, c.dense_k, access)
        keyword = self.index.keyword_search(question, c.keyword_k, access)
        fused = rrf([([i for i, _ in dense], c.dense_weight),
                     ([i for i, _ in keyword], c.keyword_weight)], c.rrf_k)
        dense_score, keyword_score = dict(dense), dict(keyword)
        dense_rank = {i: r for r, (i, _) in enumerate(dense, 1)}
        keyword_rank = {i: r for r, (i, _) in enumerate(keyword, 1)}
        top_keyword = keyword[0][1] if keyword else 1.0
        hits = []
        for chunk_id, score in sorted(fused.items(), key=lambda kv: -kv[1]):
            features = {
                "rrf": score,
                "dense": dense_score.get(chunk_id, 0.0),
                "keyword": keyword_score.get(chunk_id, 0.0) / max(top_keyword, 1e-9),
                "dense_rank": 1.0 / dense_rank[chunk_id] if chunk_id in dense_rank else 0.0,
                "keyword_rank": (1.0 / keyword_rank[chunk_id] if chunk_id in keyword_rank
                                 else 0.0),
            }
            hits.append(self._hit(chunk_id, score, features))
        return hits

    def _hit(self, chunk_id: str, score: float, features: dict[str, float] | None = None
             ) -> Hit:
        chunk = self.index.chunks[chunk_id]
        return Hit(chunk, self.index.docs[chunk.doc_id], score, features or {})

    def search(self, question: str, access: Access | None = None, mode: Mode = "final",
               k: int | None = None) -> list[Hit]:
        c = self.index.config
        if mode == "dense":
            hits = [self._hit(i, s) for i, s in self.index.dense(question, c.dense_k, access)]
        elif mode == "keyword":
            hits = [self._hit(i, s) for i, s in
                    self.index.keyword_search(question, c.keyword_k, access)]
        else:
            hits = self.candidates(question, access)
            if mode == "final" and self.reranker is not None:
                hits = self.reranker.rerank(  # type: ignore[attr-defined]
                    question, hits, self.index.lexical_for(access))
        return hits[:k] if k else hits


def documents_in_order(hits: Sequence[Hit]) -> list[str]:
    """Document ids by their best chunk's rank (several chunks of one document count once)."""
    seen: dict[str, None] = {}
    for hit in hits:
        seen.setdefault(hit.doc.doc_id, None)
    return list(seen)
