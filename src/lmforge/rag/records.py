"""What the index records about each document and chunk (kept in its manifest and chunk table),
and the pieces that turn them into store rows and back from older manifests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, is_dataclass

from lmforge.data import Document
from lmforge.rag.access import acl_of
from lmforge.rag.store import StoredChunk


@dataclass
class ChunkInfo:
    chunk_id: str
    doc_id: str
    index: int
    text: str
    page: int | None = None
    heading: str = ""


@dataclass
class DocInfo:
    doc_id: str
    hash: str
    source: str
    meta: dict[str, str]
    chunks: list[str] = field(default_factory=list)

    @property
    def tenant(self) -> str:
        return self.meta.get("tenant", "")

    @property
    def acl(self) -> list[str]:
        """The principals it names (empty: ``rag.default_access`` decides)."""
        return acl_of(self.meta)


@dataclass
class IndexReport:
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    deleted: int = 0
    chunks: int = 0
    embedded: int = 0
    problems: list[str] = field(default_factory=list)


def document_hash(doc: Document) -> str:
    payload = json.dumps([doc.text, sorted(doc.meta.items())], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def current_settings(cls: type, saved: dict) -> dict:
    """``saved`` without the settings an older version had and this one does not (at every
    level of nested sections): an index outlives the version that wrote it."""
    defaults = cls()
    known = {f.name for f in fields(cls)}
    kept = {}
    for key, value in saved.items():
        if key in known:
            default = getattr(defaults, key)
            nested = is_dataclass(default) and isinstance(value, dict)
            kept[key] = current_settings(type(default), value) if nested else value
    return kept


def stored_chunks(changed: Iterable[tuple[DocInfo, list[ChunkInfo]]]) -> list[StoredChunk]:
    return [StoredChunk(chunk.chunk_id, info.doc_id, info.tenant, info.acl)
            for info, chunks in changed for chunk in chunks]
