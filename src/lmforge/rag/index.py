"""The RAG index: a folder holding documents' chunks, their vectors (in the vector store), a
BM25 keyword index, an embedding cache, an optional trained reranker, and a manifest written last.

Re-indexing is incremental: each document has a content hash (text + metadata); unchanged
documents are skipped, changed ones are re-chunked and replaced, and documents can be deleted
(or pruned: every document no longer in the given sources). The keyword index is rebuilt from
the chunk table on each update (seconds), so it can never drift from the vector store.

Access: a document's ``tenant`` and ``acl`` (comma-separated principals) metadata go into the
store with every chunk; a search for a user is restricted to chunks whose ACL names the user,
one of their groups, or ``*`` (documents without an ACL), and to their tenant, inside the
vector query and as a mask inside BM25 scoring, before the top k are taken.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from lmforge.atomic import atomic_write_jsonl, atomic_write_text
from lmforge.config import IngestConfig, RagConfig, SourceConfig, from_dict, to_dict
from lmforge.data import Document, Problem, Reader
from lmforge.rag.chunk import chunk_text
from lmforge.rag.embed import E5Embedder, Embedder, EmbeddingCache, text_key
from lmforge.rag.keyword import ChineseAnalyzer, KeywordIndex, LexicalFeatures
from lmforge.rag.store import StoredChunk, StoreFilter, VectorStore, open_store

MANIFEST = "index.json"
CHUNKS = "chunks.jsonl"
FORMAT_VERSION = 1
PUBLIC = "*"


class RagIndexError(RuntimeError):
    """A missing or unreadable index folder."""


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
        principals = [p.strip() for p in self.meta.get("acl", "").split(",") if p.strip()]
        return principals or [PUBLIC]


@dataclass
class Access:
    """Who is asking and what they restrict the search to."""

    user: str | None = None  # None: no ACL check (an operator, or evaluation)
    groups: list[str] = field(default_factory=list)
    tenant: str | None = None
    where: dict[str, str] = field(default_factory=dict)  # document metadata that must match

    @property
    def principals(self) -> list[str] | None:
        return None if self.user is None else [self.user, *self.groups, PUBLIC]


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


def load_user_terms(path: str) -> list[str]:
    """Domain terms: one per line, or jsonl records with a ``term`` field."""
    if not path:
        return []
    terms = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("{"):
            line = str(json.loads(line).get("term", ""))
        if line:
            terms.append(line)
    return terms


class RagIndex:
    def __init__(self, folder: Path, config: RagConfig, docs: dict[str, DocInfo],
                 chunks: dict[str, ChunkInfo], embedder_name: str | None,
                 embedder: Embedder | None = None) -> None:
        self.folder = Path(folder)
        self.config = config
        self.docs = docs
        self.chunks = chunks
        self.embedder_name = embedder_name
        self._embedder = embedder
        self._store: VectorStore | None = None
        self.analyzer = ChineseAnalyzer(load_user_terms(config.user_dict))
        self._keyword: KeywordIndex | None = None
        self._lexical: LexicalFeatures | None = None

    # ---- opening and saving -------------------------------------------------------------
    @classmethod
    def create(cls, folder: Path, config: RagConfig, embedder: Embedder | None = None
               ) -> RagIndex:
        """Open the index in ``folder``, or start an empty one there."""
        if (Path(folder) / MANIFEST).exists():
            index = cls.open(folder, embedder)
            index.config = config  # retrieval settings may change between runs
            return index
        return cls(folder, config, {}, {}, None, embedder)

    @classmethod
    def open(cls, folder: Path, embedder: Embedder | None = None) -> RagIndex:
        path = Path(folder) / MANIFEST
        if not path.exists():
            raise RagIndexError(f"{folder}: no RAG index here (run `lmforge rag index` first)")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("version") != FORMAT_VERSION:
            raise RagIndexError(f"{path}: unsupported index format {manifest.get('version')}")
        known = {f.name for f in fields(RagConfig)}  # settings of older versions are dropped
        config = from_dict(RagConfig, {k: v for k, v in manifest["config"].items()
                                       if k in known})
        docs = {d["doc_id"]: DocInfo(**d) for d in manifest["docs"]}
        chunks = {}
        for line in (Path(folder) / CHUNKS).read_text(encoding="utf-8").splitlines():
            info = ChunkInfo(**json.loads(line))
            chunks[info.chunk_id] = info
        return cls(folder, config, docs, chunks, manifest.get("embedder"), embedder)

    def save(self) -> None:
        """Chunks, keyword index, then the manifest last: a crash leaves the old manifest."""
        self.keyword.save(self.folder / "keyword")
        atomic_write_jsonl(self.folder / CHUNKS, (asdict(c) for c in self.chunks.values()))
        manifest = {"version": FORMAT_VERSION, "config": to_dict(self.config),
                    "embedder": self.embedder_name, "chunk_count": len(self.chunks),
                    "docs": [asdict(d) for d in self.docs.values()]}
        atomic_write_text(self.folder / MANIFEST,
                          json.dumps(manifest, ensure_ascii=False, indent=1))

    # ---- parts, opened on first use --------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = E5Embedder(threads=self.config.embed_threads)
        if self.embedder_name not in (None, self._embedder.name):
            raise RagIndexError(f"{self.folder}: built with embedder {self.embedder_name}, "
                              f"now {self._embedder.name}; re-index into a new folder")
        return self._embedder

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            self._store = open_store(self.config.store, self.folder, self.embedder.dim,
                                     self.config.qdrant_location)
        return self._store

    @property
    def keyword(self) -> KeywordIndex:
        if self._keyword is None:
            folder = self.folder / "keyword"
            if (folder / "chunk_ids.txt").exists():
                self._keyword = KeywordIndex.load(folder, self.analyzer)
            else:
                self._rebuild_keyword()
        assert self._keyword is not None
        return self._keyword

    def _rebuild_keyword(self) -> None:
        ids = list(self.chunks)
        self._keyword = KeywordIndex.build(self.analyzer, ids,
                                           [self.chunks[i].text for i in ids])
        self._lexical = None

    @property
    def lexical(self) -> LexicalFeatures:
        """Term statistics of the chunks, built once and shared by the reranker and the
        no-answer gate (building them reads every chunk)."""
        if self._lexical is None:
            self._lexical = LexicalFeatures(self.analyzer, ((c.doc_id, c.text)
                                                            for c in self.chunks.values()))
        return self._lexical

    # ---- indexing -------------------------------------------------------------------------
    def _measure(self):  # noqa: ANN202
        if self.config.chunk_unit == "tokens":
            count = getattr(self.embedder, "token_count", None)
            if count is None:
                raise RagIndexError("chunk_unit = 'tokens' needs an embedder with token_count")
            return count
        return len

    def add(self, documents: Iterable[Document], progress: bool = True) -> IndexReport:
        """Add new and changed documents; unchanged ones cost a hash."""
        report = IndexReport()
        changed: list[tuple[DocInfo, list[ChunkInfo]]] = []
        measure = self._measure()
        for doc in documents:
            digest = document_hash(doc)
            old = self.docs.get(doc.doc_id)
            if old is not None and old.hash == digest:
                report.unchanged += 1
                continue
            paged = "pages" in doc.meta
            pieces = chunk_text(doc.doc_id, doc.text, self.config.chunk_size,
                                self.config.chunk_overlap, measure, paged)
            if not pieces:
                report.problems.append(f"{doc.doc_id}: no text to index, skipped")
                continue
            info = DocInfo(doc.doc_id, digest, doc.source, dict(doc.meta))
            chunks = [ChunkInfo(c.chunk_id, c.doc_id, c.index, c.text, c.page, c.heading)
                      for c in pieces]
            info.chunks = [c.chunk_id for c in chunks]
            changed.append((info, chunks))
            report.replaced += old is not None
            report.added += old is None
        if changed:
            self._write(changed, report, progress)
        report.chunks = len(self.chunks)
        return report

    def _write(self, changed: list[tuple[DocInfo, list[ChunkInfo]]], report: IndexReport,
               progress: bool) -> None:
        cache = EmbeddingCache(self.folder / "embeddings.npz")
        texts = [c.text for _, chunks in changed for c in chunks]
        before = len(cache.vectors)
        vectors = cache.embed(self.embedder, texts, progress=progress)
        report.embedded = len(cache.vectors) - before
        self.embedder_name = self.embedder.name
        for info, _ in changed:
            self._forget(info.doc_id)
        stored = []
        for info, chunks in changed:
            self.docs[info.doc_id] = info
            for chunk in chunks:
                self.chunks[chunk.chunk_id] = chunk
                stored.append(StoredChunk(chunk.chunk_id, info.doc_id, info.tenant, info.acl))
        self.store.upsert(stored, vectors)
        live = {text_key(self.embedder, c.text) for c in self.chunks.values()}
        cache.save(keep=live)
        self._rebuild_keyword()

    def _forget(self, doc_id: str) -> None:
        old = self.docs.pop(doc_id, None)
        for chunk_id in old.chunks if old else []:
            self.chunks.pop(chunk_id, None)

    def sync(self, paths: Sequence[Path], prune: bool = False, progress: bool = True
             ) -> IndexReport:
        """Index every document under ``paths`` (new and changed ones only) and save; with
        ``prune``, documents no longer there are deleted. Unreadable files and records are
        reported in ``problems``, the rest is indexed."""
        documents, unreadable = [], []
        for item in read_sources(paths, self.config):
            if isinstance(item, Document):
                documents.append(item)
            else:
                unreadable.append(str(item))
        report = self.add(documents, progress=progress)
        report.problems[:0] = unreadable
        if prune:
            report.deleted = self.delete(sorted(set(self.docs) - {d.doc_id for d in documents}))
        self.save()
        return report

    def delete(self, doc_ids: Sequence[str]) -> int:
        present = [d for d in doc_ids if d in self.docs]
        if present:
            self.store.delete_docs(present)
            for doc_id in present:
                self._forget(doc_id)
            self._rebuild_keyword()
        return len(present)

    # ---- access ---------------------------------------------------------------------------
    def _readable_docs(self, access: Access) -> list[str] | None:
        """Document ids passing the metadata filter; None when there is none."""
        if not access.where:
            return None
        return [d.doc_id for d in self.docs.values()
                if all(d.meta.get(k) == v for k, v in access.where.items())]

    def store_filter(self, access: Access) -> StoreFilter | None:
        doc_ids = self._readable_docs(access)
        if doc_ids is None and access.tenant is None and access.principals is None:
            return None
        return StoreFilter(doc_ids=doc_ids, tenant=access.tenant, principals=access.principals)

    def allowed_mask(self, access: Access) -> np.ndarray | None:
        """Boolean mask over the keyword index's chunks, the same conditions as store_filter."""
        where = self.store_filter(access)
        if where is None:
            return None
        readable = None if where.doc_ids is None else set(where.doc_ids)
        principals = None if where.principals is None else set(where.principals)
        mask = np.zeros(len(self.keyword.chunk_ids), dtype=bool)
        for i, chunk_id in enumerate(self.keyword.chunk_ids):
            doc = self.docs[self.chunks[chunk_id].doc_id]
            mask[i] = ((readable is None or doc.doc_id in readable)
                       and (where.tenant is None or doc.tenant == where.tenant)
                       and (principals is None or bool(principals & set(doc.acl))))
        return mask

    # ---- the two retrievers ---------------------------------------------------------------
    def dense(self, question: str, k: int, access: Access | None = None
              ) -> list[tuple[str, float]]:
        if not self.chunks:
            return []
        vector = self.embedder.embed_queries([question])[0]
        return self.store.search(vector, k, self.store_filter(access or Access()))

    def keyword_search(self, question: str, k: int, access: Access | None = None
                       ) -> list[tuple[str, float]]:
        mask = self.allowed_mask(access or Access())
        scores = self.keyword.scores(question, mask)
        order = np.argsort(-scores, kind="stable")[:k]
        ids = self.keyword.chunk_ids
        return [(ids[i], float(scores[i])) for i in order if scores[i] > 0]


def read_sources(paths: Sequence[Path], config: RagConfig) -> Iterable[Document | Problem]:
    """Documents from files and folders in any format of the data pipeline; a bad file or
    record becomes a Problem naming it, and the rest are read."""
    limits = IngestConfig()
    for path in paths:
        source = SourceConfig(name=Path(path).name or str(path), path=str(path),
                              id_field=config.id_field, meta_fields=config.meta_fields)
        reader = Reader(source, limits)
        for item in reader:
            if isinstance(item, Document):
                for key, value in reader.base_meta.items():  # the pipeline's, not the user's
                    if item.meta.get(key) == value:
                        del item.meta[key]
            yield item
