"""Memory-mapped token shards with an index: the format pretraining reads.

A split is a list of shards. Each shard is a flat ``.bin`` file of token ids (uint16 when the
vocabulary fits, else uint32) and a ``.docs.npy`` table of (start, length, source) per document,
so training can pack sequences along document boundaries and evaluation can report per source.
Documents never straddle shards.

Safety: each shard file is written atomically, and ``index.json`` -- the only thing readers
trust -- is written last, atomically, with every shard's size and checksum. A run killed midway
leaves no index (or the previous complete one), and a reader refuses a shard whose size or
checksum disagrees with the index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.atomic import atomic_open, atomic_write_text

INDEX_NAME = "index.json"
FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class ShardWriter:
    """Collects documents of one split and writes them out in shards of about ``shard_tokens``."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.out_dir, self.split = out_dir, split
        self.dtype, self.shard_tokens = dtype, shard_tokens
        self.entries: list[dict[str, Any]] = []
        self._chunks: list[np.ndarray] = []
        self._docs: list[tuple[int, int, int]] = []
        self._size = 0
        self.total_bytes = 0

    def add(self, ids: list[int], source_index: int, text_bytes: int) -> None:
        array = np.asarray(ids, dtype=self.dtype)
        self._docs.append((self._size, len(array), source_index))
        self._chunks.append(array)
        self._size += len(array)
        self.total_bytes += text_bytes
        if self._size >= self.shard_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self._docs:
            return
        stem = f"{self.split}-{len(self.entries):05d}"
        tokens_path = self.out_dir / f"{stem}.bin"
        docs_path = self.out_dir / f"{stem}.docs.npy"
        with atomic_open(tokens_path) as f:
            f.write(np.concatenate(self._chunks).tobytes())
        with atomic_open(docs_path) as f:
            np.save(f, np.asarray(self._docs, dtype=np.int64))
        self.entries.append({
            "tokens_file": tokens_path.name, "docs_file": docs_path.name, "tokens": self._size,
            "docs": len(self._docs), "sha256": _sha256(tokens_path),
        })
        self._chunks, self._docs, self._size = [], [], 0

    def close(self) -> dict[str, Any]:
        self._flush()
        return {
            "tokens": sum(e["tokens"] for e in self.entries),
            "docs": sum(e["docs"] for e in self.entries),
            "bytes": self.total_bytes,
            "shards": self.entries,
        }


def write_index(out_dir: Path, index: dict[str, Any]) -> None:
    atomic_write_text(out_dir / INDEX_NAME, json.dumps({"version": FORMAT_VERSION, **index},
                                                       indent=2, ensure_ascii=False) + "\n")


class ShardError(RuntimeError):
    """A shard folder is incomplete or corrupt."""


@dataclass
class Shard:
    tokens: np.ndarray  # a read-only memmap
    docs: np.ndarray  # (n, 3) int64: start, length, source index


class ShardSet:
    """Read side: the index, and memory-mapped shards verified against it."""

    def __init__(self, folder: Path, verify_checksums: bool = False) -> None:
        self.folder = Path(folder)
        path = self.folder / INDEX_NAME
        if not path.exists():
            raise ShardError(f"{path}: no shard index; run `lmforge data tokenize` to completion")
        self.index = json.loads(path.read_text(encoding="utf-8"))
        if self.index.get("version") != FORMAT_VERSION:
            raise ShardError(f"{path}: unsupported shard format {self.index.get('version')}")
        self.dtype = np.dtype(self.index["dtype"])
        self.sources: list[str] = self.index["sources"]
        self.verify_checksums = verify_checksums

    def splits(self) -> list[str]:
        return list(self.index["splits"])

    def split_info(self, split: str) -> dict[str, Any]:
        try:
            return self.index["splits"][split]
        except KeyError:
            raise ShardError(f"{self.folder}: no split '{split}' (has {self.splits()})") from None

    def shards(self, split: str) -> list[Shard]:
        return [self._open(entry) for entry in self.split_info(split)["shards"]]

    def _open(self, entry: dict[str, Any]) -> Shard:
        path = self.folder / entry["tokens_file"]
        expected = entry["tokens"] * self.dtype.itemsize
        if not path.exists() or path.stat().st_size != expected:
            raise ShardError(f"{path}: missing or incomplete (expected {expected} bytes)")
        if self.verify_checksums and _sha256(path) != entry["sha256"]:
            raise ShardError(f"{path}: checksum mismatch; the shard is corrupt")
        tokens = np.memmap(path, dtype=self.dtype, mode="r", shape=(entry["tokens"],))
        docs = np.load(self.folder / entry["docs_file"], allow_pickle=False)
        return Shard(tokens, docs)

    def documents(self, split: str) -> Iterator[tuple[np.ndarray, str]]:
        """Yield (token array, source name) for every document of a split."""
        for shard in self.shards(split):
            for start, length, source in shard.docs:
                yield shard.tokens[start : start + length], self.sources[source]
