"""``lmforge rag eval``: recall@k and MRR of each retriever on questions with known gold passages.

Ranks are by document (a document's best chunk), since the gold label is a passage id. With a
trained reranker, questions from the groups (contracts) it trained on are left out of every
section, so all rows compare on the same unseen questions. ``filter_field`` restricts each
question to the documents sharing its value of that field (a user asking about their own
policy); the restriction is applied inside the queries, as access control is.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from lmforge.rag.index import Access, RagIndex
from lmforge.rag.rerank import Query, Reranker, trained_groups
from lmforge.rag.retrieve import MODES, Mode, Retriever, documents_in_order
from lmforge.ranking import rank_metrics
from lmforge.text import near_copy

KS = (1, 5, 10)
NEAR_COPY = 0.9  # character-bigram F1 above which two passages count as one clause copied


def evaluate(index: RagIndex, queries: Sequence[Query], filter_field: str = "",
             modes: Sequence[Mode] = MODES, include_trained: bool = False) -> dict[str, Any]:
    """Each mode's recall@k, MRR and per-question latency (the first mode asked pays for the
    question's general embedding, which later modes reuse, as one user request would); the
    ``domain`` mode only where the index has a domain embedder."""
    reranker = Reranker.load(index)
    retriever = Retriever(index, reranker)
    trained = trained_groups(index) or set()
    kept = [q for q in queries if include_trained or q.group not in trained]
    group_meta = {d.doc_id: d.meta.get(filter_field, "") for d in index.docs.values()}
    result: dict[str, Any] = {"queries": len(kept), "excluded_trained": len(queries) - len(kept),
                              "reranker": reranker is not None, "filter": filter_field or None,
                              "fusion_setting": retriever.fusion.label()}
    finals: list[list[str]] = []
    for mode in modes:
        if mode == "domain" and index.domain_name is None:
            continue
        ranks: list[int | None] = []
        seconds: list[float] = []
        for query in kept:
            access = None
            if filter_field:
                access = Access(where={filter_field: group_meta.get(query.gold, query.group)})
            start = time.perf_counter()
            docs = documents_in_order(retriever.search(query.question, access, mode))
            seconds.append(time.perf_counter() - start)
            ranks.append(docs.index(query.gold) + 1 if query.gold in docs else None)
            if mode == modes[-1]:
                finals.append(docs)
        ms = np.array(seconds) * 1000
        result[mode] = {**rank_metrics(ranks, KS),
                        "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 1),
                                       "p99": round(float(np.percentile(ms, 99)), 1)}
                        if len(ms) else {}}
    result["near_copies"] = near_copy_ceiling(index, kept, finals)
    return result


def near_copy_ceiling(index: RagIndex, queries: Sequence[Query], rankings: Sequence[list[str]]
                      ) -> dict[str, float]:
    """What clauses copied across contracts cost the last ranking: the share of questions
    whose gold passage has a near-copy (character-bigram F1 >= ``NEAR_COPY``) among the
    ranked documents, and the share where such a copy is ranked above the gold one (a
    question that does not name its contract cannot tell them apart: at rank 1 that is a
    miss no retriever can avoid without the contract)."""
    texts = {doc_id: " ".join(index.chunks[c].text for c in info.chunks)
             for doc_id, info in index.docs.items()}
    has_copy = above = 0
    for query, docs in zip(queries, rankings, strict=True):
        gold = texts.get(query.gold, "")
        rank = docs.index(query.gold) if query.gold in docs else len(docs)
        copies = {d for d in docs if d != query.gold and near_copy(texts[d], gold, NEAR_COPY)}
        has_copy += bool(copies)
        above += any(d in copies for d in docs[:rank])
    n = max(len(queries), 1)
    return {"gold_has_near_copy": round(has_copy / n, 4),
            "near_copy_ranked_above_gold": round(above / n, 4)}

