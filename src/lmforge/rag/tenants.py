"""Keyword statistics per tenant: BM25 and the coverage features (IDF and per-document terms)
of the no-answer gate and the reranker, computed over the documents a user of one tenant could
read at all (their tenant's, and under ``public`` every document without principals). One
tenant's documents therefore never move another tenant's scores, answerability or reranker
features. Operators use the statistics over every chunk. Built on first use, once per
generation (an index object holds one generation)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from lmforge.rag.access import open_to_all
from lmforge.rag.keyword import ChineseAnalyzer, KeywordIndex, LexicalFeatures

if TYPE_CHECKING:
    from lmforge.rag.index import ChunkInfo, DocInfo

T = TypeVar("T")


class TenantStatistics:
    """Per-tenant ``KeywordIndex`` and ``LexicalFeatures``, cached."""

    def __init__(self) -> None:
        self._keyword: dict[str, KeywordIndex] = {}
        self._lexical: dict[str, LexicalFeatures] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._keyword, self._lexical = {}, {}

    @staticmethod
    def chunk_ids(docs: Mapping[str, DocInfo], chunks: Mapping[str, ChunkInfo], tenant: str,
                  policy: str) -> list[str]:
        return [c.chunk_id for c in chunks.values()
                if (doc := docs[c.doc_id]).tenant == tenant or open_to_all(doc.acl, policy)]

    def _cached(self, cache: dict[str, T], tenant: str, build: Callable[[], T]) -> T:
        with self._lock:
            if tenant not in cache:
                cache[tenant] = build()
            return cache[tenant]

    def _for_tenant(self, cache: dict[str, T], tenant: str, docs: Mapping[str, DocInfo],
                    chunks: Mapping[str, ChunkInfo], policy: str,
                    make: Callable[[list[str]], T], whole: Callable[[], T]) -> T:
        """``make(chunk ids)`` over what the tenant could read; ``whole()`` when that is every
        chunk (the statistics the index already has)."""
        def build() -> T:
            ids = self.chunk_ids(docs, chunks, tenant, policy)
            return whole() if len(ids) == len(chunks) else make(ids)

        return self._cached(cache, tenant, build)

    def keyword(self, tenant: str, docs: Mapping[str, DocInfo], chunks: Mapping[str, ChunkInfo],
                policy: str, analyzer: ChineseAnalyzer, whole: Callable[[], KeywordIndex]
                ) -> KeywordIndex:
        return self._for_tenant(
            self._keyword, tenant, docs, chunks, policy,
            lambda ids: KeywordIndex.build(analyzer, ids, [chunks[i] for i in ids]), whole)

    def lexical(self, tenant: str, docs: Mapping[str, DocInfo], chunks: Mapping[str, ChunkInfo],
                policy: str, analyzer: ChineseAnalyzer, whole: Callable[[], LexicalFeatures]
                ) -> LexicalFeatures:
        return self._for_tenant(
            self._lexical, tenant, docs, chunks, policy,
            lambda ids: LexicalFeatures(analyzer, ((chunks[i].doc_id, chunks[i].searchable)
                                                   for i in ids)), whole)
