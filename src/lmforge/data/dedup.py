"""Exact and near-duplicate removal across all sources.

Exact: a hash of the text with case, whitespace and punctuation removed, so copies that differ
only in formatting collide. Near: MinHash over character shingles with LSH banding: the
signatures and the band layout are ``datasketch``'s (the standard implementation), the index a
compact set per band that answers as ``MinHashLSH`` does (``Deduplicator``). Character
shingles work for Chinese and English alike. The first document seen is kept, so source order
in the recipe decides which copy survives.

The check is split in two so that the data engine can run it on many cores with the same result:
``fingerprint`` (the costly part: the hash and the MinHash signature of one document) needs no
index and runs anywhere; ``Deduplicator.check`` then decides in order against what was kept.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from typing import Any, NamedTuple

import numpy as np

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


class Fingerprint(NamedTuple):
    """What deduplication needs of one document: its exact hash and its MinHash values (each
    empty when that check is off)."""

    digest: str
    hashvalues: np.ndarray | None


@cache
def _template(num_perm: int, seed: int) -> Any:
    """An empty MinHash; its permutations are drawn once per process, not once per document."""
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed)


def fingerprint(text: str, config: DedupConfig, seed: int) -> Fingerprint:
    digest = exact_hash(text) if config.exact else ""
    if not config.near:
        return Fingerprint(digest, None)
    signature = _template(config.num_perm, seed).copy()
    signature.update_batch(list(shingles(text, config.shingle_chars)))
    return Fingerprint(digest, signature.hashvalues)


class Deduplicator:
    """Streams documents and says, for each, whether it is new, an exact or a near duplicate.

    The near-duplicate index is datasketch's LSH banding (its band count and width for the
    threshold) held as one set of band values per band: a document is a near duplicate when
    one of its bands equals that band of a kept document, which is exactly when
    ``MinHashLSH.query`` returns a candidate, in a third of the memory (MinHashLSH also
    keeps, per document, a key and its band list, for removing and listing documents, which
    dedup never does). The index still grows with the documents kept: ~1 KB each.
    """

    def __init__(self, config: DedupConfig, seed: int = 1) -> None:
        from datasketch import MinHashLSH

        self.config = config
        self._seed = seed
        self._seen: set[str] = set()
        bands = MinHashLSH(threshold=config.jaccard_threshold, num_perm=config.num_perm)
        self._ranges: list[tuple[int, int]] = list(bands.hashranges)
        self._bands: list[set[bytes]] = [set() for _ in self._ranges]

    def check(self, text: str, known: Fingerprint | None = None) -> str | None:
        """Return "exact" or "near" for a duplicate, else None and remember the document.
        ``known``: the document's fingerprint when it was computed elsewhere."""
        digest, hashvalues = known or fingerprint(text, self.config, self._seed)
        if self.config.exact and digest in self._seen:
            return "exact"
        bands = [] if hashvalues is None else [
            hashvalues[start:end].tobytes() for start, end in self._ranges]
        if any(band in kept for band, kept in zip(bands, self._bands, strict=False)):
            return "near"
        if self.config.exact:
            self._seen.add(digest)
        for band, kept in zip(bands, self._bands, strict=False):
            kept.add(band)
        return None


def jaccard(a: str, b: str, size: int = 5) -> float:
    """Exact shingle Jaccard similarity, for reports and tests of the MinHash estimate."""
    sa, sb = shingles(a, size), shingles(b, size)
    return len(sa & sb) / max(1, len(sa | sb))
