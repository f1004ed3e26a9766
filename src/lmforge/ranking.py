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


def reciprocal(ranks: Sequence[int | None]) -> list[float]:
    return [1.0 / r if r else 0.0 for r in ranks]


def clearly_better(candidate: Sequence[int | None], baseline: Sequence[int | None]) -> bool:
    """Whether ``candidate``'s ranks beat ``baseline``'s on the same questions by more than
    noise: the mean paired gain in reciprocal rank exceeds one standard error of it. A few
    hundred validation questions cannot tell a 0.002 MRR gain from chance, and a choice made
    on chance is a choice against the held-out data as often as for it."""
    gains = [c - b for c, b in zip(reciprocal(candidate), reciprocal(baseline), strict=True)]
    if len(gains) < 2:
        return sum(gains) > 0
    mean = sum(gains) / len(gains)
    spread = (sum((g - mean) ** 2 for g in gains) / (len(gains) - 1)) ** 0.5
    return mean > spread / len(gains) ** 0.5 + 1e-12  # (one lucky question: exactly equal)
