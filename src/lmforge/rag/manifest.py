"""Publishing an index by generation, so a reader always sees one complete state.

Each save writes generation ``g + 1``'s chunk table and keyword index under their own names
(``chunks.G.jsonl``, ``keyword.G/``), then the manifest (``index.json``, carrying ``generation``)
atomically, last: the manifest *is* the publication. A kill at any point leaves the previous
manifest naming files that are still whole. The vector store is shared by all generations, so a
writer first records the documents it is about to touch (``pending.json``); readers drop store
rows their manifest does not list, and the next writer (``RagIndex.create``) repairs the store
to the manifest: orphan rows deleted, missing ones re-added. The last few generations' files are
kept for readers still opening them.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_text

MANIFEST = "index.json"
PENDING = "pending.json"
FORMAT_VERSION = 1
KEEP_GENERATIONS = 3
GENERATION_FILE = re.compile(r"^(?:chunks\.(\d+)\.jsonl|keyword\.(\d+))$")


class RagIndexError(RuntimeError):
    """A missing or unreadable index folder."""


def chunks_path(folder: Path, generation: int) -> Path:
    """Generation 0 is an index written before generations existed."""
    return folder / ("chunks.jsonl" if generation == 0 else f"chunks.{generation}.jsonl")


def keyword_path(folder: Path, generation: int) -> Path:
    return folder / ("keyword" if generation == 0 else f"keyword.{generation}")


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise RagIndexError(f"{folder}: no RAG index here (run `lmforge rag index` first)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("version") != FORMAT_VERSION:
        raise RagIndexError(f"{path}: unsupported index format {manifest.get('version')}")
    manifest.setdefault("generation", 0)
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(Path(folder) / MANIFEST, json.dumps(manifest, ensure_ascii=False,
                                                          indent=1))


def stamp(folder: Path) -> tuple[int, int, int] | None:
    """What changes when a manifest is published (it is replaced, so its inode changes)."""
    try:
        st = (Path(folder) / MANIFEST).stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def prune_generations(folder: Path, current: int) -> None:
    """Delete the files of generations older than the last ``KEEP_GENERATIONS``."""
    for path in Path(folder).iterdir():
        found = GENERATION_FILE.match(path.name)
        if found and int(found.group(1) or found.group(2)) <= current - KEEP_GENERATIONS:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def mark_pending(folder: Path, doc_ids: list[str]) -> None:
    """Record the documents whose store rows are about to change (merged with any left)."""
    atomic_write_text(Path(folder) / PENDING, json.dumps(sorted(set(pending(folder))
                                                                | set(doc_ids))))


def pending(folder: Path) -> list[str]:
    path = Path(folder) / PENDING
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def clear_pending(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (Path(folder) / PENDING).unlink()
