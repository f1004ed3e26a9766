"""Choosing the fusion on validation questions (``lmforge rag tune-fusion``; ``lmforge run``
calls it after the domain embedder is trained).

Each validation question's ranked lists are retrieved once (BM25 and the domain embedder over
the question and its rewrites, the general embedder over the question), and every weighting of
the grid is fused from them, so the search costs one retrieval per question, not one per
setting. The choice is by MRR (it rewards rank 1 and the top 5 together), ties going to the
setting that uses fewer lists: a list that does not help costs latency for nothing; and the
best of the grid replaces the config's two-list fusion only when it is clearly better (paired
gain above one standard error): the best of 64 settings on ~100 questions is partly luck. The
validation questions must come from contracts none of the trained parts learned from.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from lmforge.rag.fusion import Fusion, write_fusion
from lmforge.rag.index import RagIndex
from lmforge.rag.rerank import Query
from lmforge.rag.retrieve import Lists, Retriever, documents_in_order
from lmforge.ranking import clearly_better, rank_metrics

DENSE = (0.0, 0.25, 0.5, 1.0)
DOMAIN = (0.0, 0.5, 1.0, 2.0)
REWRITES = (0.0, 0.25, 0.5, 1.0)
REWRITE_LIMIT = 3


def grid(domain: bool) -> list[Fusion]:
    return [Fusion(1.0, dense, dom, rewrites, REWRITE_LIMIT if rewrites else 0)
            for dense, dom, rewrites in itertools.product(DENSE, DOMAIN if domain else (0.0,),
                                                          REWRITES)]


def lists_used(fusion: Fusion) -> int:
    return 1 + (fusion.dense > 0) + (fusion.domain > 0) + (fusion.rewrites > 0)


def ranks_of(retriever: Retriever, lists: Sequence[tuple[Query, Lists]], fusion: Fusion
             ) -> list[int | None]:
    ranks: list[int | None] = []
    for query, found in lists:
        docs = documents_in_order(retriever.fuse(found, fusion))
        ranks.append(docs.index(query.gold) + 1 if query.gold in docs else None)
    return ranks


def score(retriever: Retriever, lists: Sequence[tuple[Query, Lists]], fusion: Fusion
          ) -> dict[str, float]:
    return rank_metrics(ranks_of(retriever, lists, fusion), (1, 5, 10))


def tune_fusion(index: RagIndex, validation: Sequence[Query], write: bool = True
                ) -> tuple[Fusion, dict[str, Any]]:
    """The best fusion of the grid on ``validation``, stored with the index when ``write``."""
    retriever = Retriever(index)
    domain = index.domain_name is not None
    lists = [(q, retriever.lists(q.question, None, REWRITE_LIMIT, domain))
             for q in validation if q.gold in index.docs]
    if not lists:
        raise ValueError("fusion tuning needs validation questions whose gold passage is in "
                         "the index")
    scored = [(fusion, score(retriever, lists, fusion)) for fusion in grid(domain)]
    best, metrics = max(scored, key=lambda fm: (fm[1]["mrr"], -lists_used(fm[0])))
    hybrid = retriever.hybrid
    kept = clearly_better(ranks_of(retriever, lists, best), ranks_of(retriever, lists, hybrid))
    if not kept:  # within noise of the config's fusion: keep the config's
        best, metrics = hybrid, score(retriever, lists, hybrid)
    rows = {"chosen": metrics, "hybrid (config)": score(retriever, lists, hybrid),
            "chosen without rewrites": score(retriever, lists, without(best, rewrites=0.0)),
            "chosen without the domain embedder": score(retriever, lists,
                                                        without(best, domain=0.0)),
            "chosen without the general embedder": score(retriever, lists,
                                                         without(best, dense=0.0))}
    report = {"validation_questions": len(lists), "chosen": best.label(), "rows": rows,
              "best_of_grid_clearly_better": kept,
              "settings_compared": len(scored)}
    if write:
        write_fusion(index.folder, best, report)
    return best, report


def without(fusion: Fusion, **zeroed: float) -> Fusion:
    values = {**fusion.__dict__, **zeroed}
    if not values["rewrites"]:
        values["rewrite_limit"] = 0
    return Fusion(**values)
