"""What the index records about each document and chunk (kept in its manifest and chunk table),
and the pieces that turn them into store rows and back from older manifests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import PurePosixPath

from lmforge.config import RagConfig
from lmforge.data import SUFFIX_FORMATS, Document
from lmforge.rag.access import acl_of
from lmforge.rag.chunk import HEADING_PATH, chunk_text
from lmforge.rag.chunk import heading as markdown_heading
from lmforge.rag.store import StoredChunk

UNTITLED_SLIDE = "Slide {number}"  # the heading ``data/office.py`` gives a slide without a title


@dataclass
class ChunkInfo:
    chunk_id: str
    doc_id: str
    index: int
    text: str
    page: int | None = None
    heading: str = ""
    title: str = ""  # the document's (``document_title``), for ``searchable``

    @property
    def section(self) -> str:
        """The heading path below the document's title (a title slide's, or a docx's under
        its Title heading, does not repeat the title)."""
        parts = self.heading.split(HEADING_PATH) if self.heading else []
        return HEADING_PATH.join(parts[1:] if parts[:1] == [self.title] else parts)

    @property
    def label(self) -> str:
        """What names the chunk rather than says its content: the document's title, then its
        section's heading path. A table chunk holds only rows under their header; which
        product, sheet or slide they belong to is said here."""
        return "\n".join(part for part in (self.title, self.section) if part)

    @property
    def searchable(self) -> str:
        """What questions are matched against (embeddings, coverage, reranker; BM25 scores
        ``label`` and ``text`` as two fields, ``keyword.py``): the text under its label,
        which names the product where the chunk does not (two products' same-shaped rate
        tables differ only in their numbers). What the model is shown and cites stays
        ``text``; a chunk without a label is searched as its text alone (so its cached
        vectors stay valid)."""
        return f"{self.label}\n{self.text}" if self.label else self.text


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


def document_title(doc: Document) -> str:
    """The name a document's chunks are searched under: its ``title`` metadata (html, epub,
    or a record's field); for a slide deck its first slide's title (the title slide names the
    product, the later slides only their topic: 保障计划对比); else for a file the reader read
    its name without the suffix (an xlsx carries no title, and company files are named for
    their product: ``安心保费率表.xlsx``). A record's id names nothing and gives none."""
    if doc.meta.get("title"):
        return " ".join(doc.meta["title"].split())
    if doc.meta.get("positions") == "slide":
        first = markdown_heading(doc.text.split("\n", 1)[0])
        if first and first[1] != UNTITLED_SLIDE.format(number=1):
            return first[1]
    path = PurePosixPath(doc.doc_id.replace("\\", "/"))
    return path.stem if path.suffix.lower() in SUFFIX_FORMATS else ""


def document_chunks(doc: Document, config: RagConfig,
                    measure: Callable[[str], int]) -> list[ChunkInfo]:
    """A document's chunks as the index keeps them: sized by ``measure``, under its title."""
    pieces = chunk_text(doc.doc_id, doc.text, config.chunk_size, config.chunk_overlap, measure,
                        "pages" in doc.meta)
    title = document_title(doc)
    return [ChunkInfo(c.chunk_id, c.doc_id, c.index, c.text, c.page, c.heading, title)
            for c in pieces]


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
