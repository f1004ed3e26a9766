"""Exact and near-duplicate removal across all sources.

Exact: a hash of the text with case, whitespace and punctuation removed, so copies that differ
only in formatting collide. Near: MinHash over character shingles with LSH banding, through
``datasketch`` (the standard implementation; writing our own would buy nothing). Character
shingles work for Chinese and English alike. The first document seen is kept, so source order
in the recipe decides which copy survives.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from lmforge.config import DedupConfig

_NOT_CONTENT = re.compile(r"[\W_]+", re.UNICODE)


def normalised_key(text: str) -> str:
    return _NOT_CONTENT.sub("", text.lower())


def exact_hash(text: str) -> str:
    return hashlib.sha1(normalised_key(text).encode("utf-8")).hexdigest()


def shingles(text: str, size: int) -> set[bytes]:
    key = normalised_key(text)
    if len(key) <= size:
        return {key.encode("utf-8")}
    return {key[i : i + size].encode("utf-8") for i in range(len(key) - size + 1)}


class Deduplicator:
    """Streams documents and says, for each, whether it is new, an exact or a near duplicate."""

    def __init__(self, config: DedupConfig, seed: int = 1) -> None:
        from datasketch import MinHash, MinHashLSH

        self.config = config
        self._minhash = MinHash
        self._seen: set[str] = set()
        self._lsh = MinHashLSH(threshold=config.jaccard_threshold, num_perm=config.num_perm)
        self._seed = seed
        self._count = 0

    def _signature(self, text: str) -> Any:
        m = self._minhash(num_perm=self.config.num_perm, seed=self._seed)
        m.update_batch(list(shingles(text, self.config.shingle_chars)))
        return m

    def check(self, text: str) -> str | None:
        """Return "exact" or "near" for a duplicate, else None and remember the document."""
        if self.config.exact:
            digest = exact_hash(text)
            if digest in self._seen:
                return "exact"
        signature = None
        if self.config.near:
            signature = self._signature(text)
            if self._lsh.query(signature):
                return "near"
        if self.config.exact:
            self._seen.add(digest)
        if signature is not None:
            self._lsh.insert(str(self._count), signature, check_duplication=False)
        self._count += 1
        return None


def jaccard(a: str, b: str, size: int = 5) -> float:
    """Exact shingle Jaccard similarity, for reports and tests of the MinHash estimate."""
    sa, sb = shingles(a, size), shingles(b, size)
    return len(sa & sb) / max(1, len(sa | sb))
