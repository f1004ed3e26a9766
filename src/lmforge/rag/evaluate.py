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

KS = (1, 5, 10)


def evaluate(index: RagIndex, queries: Sequence[Query], filter_field: str = "",
             modes: Sequence[Mode] = MODES, include_trained: bool = False) -> dict[str, Any]:
    reranker = Reranker.load(index)
    retriever = Retriever(index, reranker)
    trained = trained_groups(index) or set()
    kept = [q for q in queries if include_trained or q.group not in trained]
    group_meta = {d.doc_id: d.meta.get(filter_field, "") for d in index.docs.values()}
    result: dict[str, Any] = {"queries": len(kept), "excluded_trained": len(queries) - len(kept),
                              "reranker": reranker is not None, "filter": filter_field or None}
    for mode in modes:
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
        ms = np.array(seconds) * 1000
        result[mode] = {**rank_metrics(ranks, KS),
                        "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 1),
                                       "p99": round(float(np.percentile(ms, 99)), 1)}
                        if len(ms) else {}}
    return result
