"""Seeded held-out splits that never reshuffle: whether a name (a document, a contract, an
example) is held out depends only on the name, the seed, the split's purpose and the fraction,
so adding or removing other items never moves it. Every split in lmforge (the data stage's
validation split, post-training validation, the reranker's held-out and inner-validation
groups) is this one function with its own ``purpose``."""

from __future__ import annotations

import hashlib


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` alone."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64


def held_out(name: str, fraction: float, seed: int, purpose: str = "") -> bool:
    key = f"{seed}:{purpose}:{name}" if purpose else f"{seed}:{name}"
    return stable_fraction(key) < fraction
