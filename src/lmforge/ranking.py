"""Ranking metrics over the 1-based rank of each question's gold item (``None``: not found).
One definition for ``rag eval``, the reranker's training report and its validation."""

from __future__ import annotations

from collections.abc import Sequence


def rank_metrics(ranks: Sequence[int | None], ks: Sequence[int] = (1,)) -> dict[str, float]:
    """recall@k for each k and MRR, rounded to 4 places."""
    n = max(len(ranks), 1)
    out = {f"recall@{k}": sum(1 for r in ranks if r and r <= k) / n for k in ks}
    out["mrr"] = sum(1.0 / r for r in ranks if r) / n
    return {k: round(v, 4) for k, v in out.items()}
