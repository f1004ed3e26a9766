"""Exact and near-duplicate removal across all sources, in memory that does not grow with the
corpus.

Exact: a hash of the text with case, whitespace and punctuation removed, so copies that differ
only in formatting collide. Near: MinHash over character shingles with LSH banding: the
signatures and the band layout are ``datasketch``'s (the standard implementation). Character
shingles work for Chinese and English alike. The rule: a document is dropped when it shares its
exact hash, or one LSH band, with a document *kept* before it, so source order in the recipe
decides which copy survives -- exactly what ``MinHashLSH.query`` against the kept documents
answers (the tests check it against datasketch itself).

The work comes in two parts so that it runs on many cores and at any size with the same result.
``fingerprint`` (the costly part) turns one document into its dedup keys -- the exact hash and
one 128-bit key per band -- and runs anywhere. ``find_duplicates`` then decides, in order, with
its working set on disk, as datatrove's MinHash stages do: the keys are partitioned into buckets
by value and each bucket sorted on its own, which leaves only the keys that two documents share
(most keys belong to one document alone); those "groups" are partitioned by document and read
back in document order, deciding each document against the groups a kept document already
holds. Memory: one bucket at a time (``data.dedup.bucket_mb``), one byte per document for the decision and one
per shared group, where an index in memory held ~1.2 KB per kept document (bench/RESULTS.md).
datatrove's own stages are not used: they keep one document per *cluster* of near copies, not
the first of each against what was kept (docs/cluster.md).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import DedupConfig

_NOT_CONTENT = re.compile(r"[\W_]+", re.UNICODE)

KEPT, EXACT, NEAR = 0, 1, 2  # a document's decision
REASONS = {EXACT: "exact", NEAR: "near"}
RECORD = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("slot", "<u8")])  # slot: doc * keys + column
PAIR = np.dtype([("doc", "<u8"), ("group", "<u8")])


def normalised_key(text: str) -> str:
    return _NOT_CONTENT.sub("", text.lower())


def exact_hash(text: str) -> str:
    return hashlib.sha1(normalised_key(text).encode("utf-8")).hexdigest()


def shingles(text: str, size: int) -> set[bytes]:
    key = normalised_key(text)
    if len(key) <= size:
        return {key.encode("utf-8")}
    return {key[i : i + size].encode("utf-8") for i in range(len(key) - size + 1)}


@cache
def _template(num_perm: int, seed: int) -> Any:
    """An empty MinHash; its permutations are drawn once per process, not once per document."""
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed)


@cache
def band_ranges(threshold: float, num_perm: int) -> tuple[tuple[int, int], ...]:
    """datasketch's band layout for the threshold: the signature slices that make up the bands."""
    from datasketch import MinHashLSH

    return tuple(MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges)


def key_count(config: DedupConfig) -> int:
    """Keys per document: the exact hash first (when on), then one per band (when on)."""
    bands = len(band_ranges(config.jaccard_threshold, config.num_perm)) if config.near else 0
    return int(config.exact) + bands


def _key(kind: bytes, value: bytes) -> tuple[int, int]:
    """128 bits of a keyed hash: two documents collide by chance with probability 2^-128, and an
    exact hash never equals a band key (the kind is the key)."""
    digest = hashlib.blake2b(value, digest_size=16, person=kind).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def fingerprint(text: str, config: DedupConfig, seed: int) -> np.ndarray:
    """The document's dedup keys: a (``key_count``, 2) array of uint64."""
    keys = [_key(b"exact", exact_hash(text).encode())] if config.exact else []
    if config.near:
        signature = _template(config.num_perm, seed).copy()
        signature.update_batch(list(shingles(text, config.shingle_chars)))
        values = signature.hashvalues
        ranges = band_ranges(config.jaccard_threshold, config.num_perm)
        keys += [_key(b"band%d" % i, values[start:end].tobytes())
                 for i, (start, end) in enumerate(ranges)]
    return np.array(keys, dtype="<u8").reshape(len(keys), 2)


def find_duplicates(batches: Iterable[np.ndarray], config: DedupConfig, work: Path,
                    budget: int | None = None) -> np.ndarray:
    """The decision (KEPT, EXACT or NEAR) for each document, in order, given the documents' keys
    in batches of (n, ``key_count``, 2) in that order. ``work``: a scratch folder, removed after;
    ``budget``: the bytes of keys one bucket holds (the peak is about three times that;
    default ``config.bucket_mb``)."""
    budget = budget or config.bucket_mb << 20
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        spool = work / "keys.u8"
        with spool.open("wb") as f:
            for batch in batches:
                np.ascontiguousarray(batch, dtype="<u8").tofile(f)
        width = key_count(config)
        docs = spool.stat().st_size // (16 * width) if width else 0
        decisions = np.zeros(docs, dtype=np.uint8)
        if docs:
            keys = np.memmap(spool, dtype="<u8", mode="r").reshape(docs, width, 2)
            buckets = max(1, -(-docs * width * RECORD.itemsize // budget))
            _partition(keys, buckets, work, max(1, budget // (width * RECORD.itemsize)))
            exact = _shared_groups(buckets, -(-docs // buckets), width, config.exact, work)
            _decide(decisions, exact, buckets, work)
        return decisions
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _scatter(rows: np.ndarray, where: np.ndarray, name: str, work: Path) -> None:
    """Append each row to the file ``name``N that ``where`` gives it, in their order."""
    if not len(rows):
        return
    order = np.argsort(where, kind="stable")
    numbers, starts = np.unique(where[order], return_index=True)
    for number, block in zip(numbers.tolist(), np.split(rows[order], starts[1:]), strict=True):
        with (work / f"{name}{number}").open("ab") as f:
            block.tofile(f)


def _partition(keys: np.ndarray, buckets: int, work: Path, step: int) -> None:
    """Every key as a record (value, document and column) into the bucket its value picks,
    ``step`` documents at a time."""
    docs, width, _ = keys.shape
    for start in range(0, docs, step):
        block = np.asarray(keys[start : start + step])
        records = np.empty(block.shape[0] * width, dtype=RECORD)
        records["hi"], records["lo"] = block[:, :, 0].ravel(), block[:, :, 1].ravel()
        records["slot"] = np.arange(start * width, start * width + len(records), dtype="<u8")
        _scatter(records, records["hi"] % np.uint64(buckets), "bucket", work)


def _shared_groups(buckets: int, span: int, width: int, has_exact: bool, work: Path
                   ) -> np.ndarray:
    """Each bucket sorted by value: a value held by two or more documents becomes a group,
    written as (document, group) pairs to the part of the documents it falls in; returns, per
    group, whether it is an exact hash (column 0 when exact dedup is on)."""
    exact: list[np.ndarray] = []
    groups = 0
    for bucket in range(buckets):
        path = work / f"bucket{bucket}"
        if not path.exists():
            continue
        records = np.fromfile(path, dtype=RECORD)
        path.unlink()
        records = records[np.lexsort((records["lo"], records["hi"]))]
        new = np.ones(len(records), dtype=bool)
        new[1:] = (records["hi"][1:] != records["hi"][:-1]) | (
            records["lo"][1:] != records["lo"][:-1])
        starts = np.flatnonzero(new)
        sizes = np.diff(np.append(starts, len(records)))
        group = np.cumsum(new) - 1  # each record's value, numbered in this bucket
        shared = (sizes >= 2)[group]
        number = np.cumsum(sizes >= 2) - 1  # shared values numbered in this bucket
        pairs = np.empty(int(shared.sum()), dtype=PAIR)
        pairs["doc"] = records["slot"][shared] // np.uint64(width)
        pairs["group"] = groups + number[group[shared]]
        first = records["slot"][starts[sizes >= 2]]
        exact.append((first % np.uint64(width) == 0) & has_exact)
        groups += int((sizes >= 2).sum())
        _scatter(pairs, pairs["doc"] // np.uint64(span), "part", work)
    return np.concatenate(exact) if exact else np.zeros(0, dtype=bool)


def _decide(decisions: np.ndarray, exact: np.ndarray, parts: int, work: Path) -> None:
    """In document order: a document in a group that a kept document holds is a duplicate
    (EXACT if that group is an exact hash); a document kept holds all its groups."""
    held = bytearray(len(exact))
    is_exact = exact.astype(np.uint8).tobytes()
    for part in range(parts):
        path = work / f"part{part}"
        if not path.exists():
            continue
        pairs = np.fromfile(path, dtype=PAIR)
        pairs = pairs[np.argsort(pairs["doc"], kind="stable")]
        docs, starts = np.unique(pairs["doc"], return_index=True)
        groups = np.split(pairs["group"], starts[1:])
        for doc, mine in zip(docs.tolist(), groups, strict=True):
            ids = mine.tolist()
            hit = [g for g in ids if held[g]]
            if hit:
                decisions[doc] = EXACT if any(is_exact[g] for g in hit) else NEAR
            else:
                for g in ids:
                    held[g] = 1


def jaccard(a: str, b: str, size: int = 5) -> float:
    """Exact shingle Jaccard similarity, for reports and tests of the MinHash estimate."""
    sa, sb = shingles(a, size), shingles(b, size)
    return len(sa & sb) / max(1, len(sa | sb))
