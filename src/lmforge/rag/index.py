"""The RAG index: a folder holding documents' chunks, their vectors (in the vector store), a
BM25 keyword index, an embedding cache, an optional trained reranker, and a manifest written last.

Re-indexing is incremental: each document has a content hash (text + metadata); unchanged
documents are skipped, changed ones are re-chunked and replaced, and documents can be deleted
(or pruned: every document no longer in the given sources). The keyword index is rebuilt from
the chunk table on each update (seconds), so it can never drift from the vector store. Each
save publishes a new generation (``rag/manifest.py``): readers see one complete state, and the
next writer repairs a store that a killed run left ahead of its manifest.

Access (``rag/access.py``) is decided from this index's own manifest: the readable documents go
into the vector query as a condition and into BM25 scoring as a mask, before the top k are
taken, and a store row the manifest does not list is dropped. Users' keyword statistics are
computed over their own tenant's documents, so one tenant's documents never move another's
scores.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lmforge.atomic import atomic_write_jsonl
from lmforge.config import RagConfig, from_dict, to_dict
from lmforge.data import Document
from lmforge.rag.access import Access, acl_problems, may_read
from lmforge.rag.domain import SPACE as DOMAIN_SPACE
from lmforge.rag.domain import DomainEmbedder, model_folder
from lmforge.rag.embed import E5Embedder, Embedder, EmbeddingCache, text_key
from lmforge.rag.expand import Expander, load_glossary
from lmforge.rag.keyword import ChineseAnalyzer, KeywordIndex, LexicalFeatures
from lmforge.rag.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    RagIndexError,
    chunks_path,
    clear_pending,
    keyword_path,
    mark_pending,
    pending,
    prune_generations,
    read_manifest,
    write_manifest,
)
from lmforge.rag.records import (
    ChunkInfo,
    DocInfo,
    IndexReport,
    current_settings,
    document_chunks,
    document_hash,
    stored_chunks,
)
from lmforge.rag.sources import load_user_terms, read_sources
from lmforge.rag.store import StoreFilter, VectorStore, open_store
from lmforge.rag.tenants import TenantStatistics

__all__ = ["Access", "ChunkInfo", "DocInfo", "IndexReport", "RagIndex", "RagIndexError",
           "read_sources"]


class RagIndex:
    def __init__(self, folder: Path, config: RagConfig, docs: dict[str, DocInfo],
                 chunks: dict[str, ChunkInfo], embedder_name: str | None,
                 embedder: Embedder | None = None, generation: int = 0,
                 store: VectorStore | None = None, domain_name: str | None = None) -> None:
        self.folder = Path(folder)
        self.config = config
        self.docs = docs
        self.chunks = chunks
        self.embedder_name = embedder_name
        self.generation = generation  # the published state this object holds
        self._embedder = embedder
        self._store = store
        self.domain_name = domain_name  # the domain embedder's, once one is attached
        self._domain: Embedder | None = None
        self._domain_store: VectorStore | None = None
        self.analyzer = ChineseAnalyzer(load_user_terms(config.user_dict))
        self._keyword: KeywordIndex | None = None
        self._lexical: LexicalFeatures | None = None
        self._expander: Expander | None = None
        self._tenants = TenantStatistics()  # BM25 and coverage statistics per tenant

    # ---- opening and saving -------------------------------------------------------------
    @classmethod
    def create(cls, folder: Path, config: RagConfig, embedder: Embedder | None = None
               ) -> RagIndex:
        """Open the index in ``folder`` for writing (repairing what a killed run left), or
        start an empty one there."""
        if (Path(folder) / MANIFEST).exists():
            index = cls.open(folder, embedder)
            index.config = config  # retrieval settings may change between runs
        else:
            index = cls(folder, config, {}, {}, None, embedder)
        if (Path(folder) / MANIFEST).exists() or pending(Path(folder)):
            index.repair()
        return index

    @classmethod
    def open(cls, folder: Path, embedder: Embedder | None = None,
             store: VectorStore | None = None) -> RagIndex:
        """The published state of ``folder``: manifest, chunk table and keyword index of one
        generation (retried if a writer pruned that generation while it was being read)."""
        for attempt in range(3):
            manifest = read_manifest(folder)
            try:
                return cls._from_manifest(Path(folder), manifest, embedder, store)
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _from_manifest(cls, folder: Path, manifest: dict, embedder: Embedder | None,
                       store: VectorStore | None) -> RagIndex:
        config = from_dict(RagConfig, current_settings(RagConfig, manifest["config"]))
        generation = int(manifest["generation"])
        docs = {d["doc_id"]: DocInfo(**d) for d in manifest["docs"]}
        chunks = {}
        for line in chunks_path(folder, generation).read_text(encoding="utf-8").splitlines():
            info = ChunkInfo(**json.loads(line))
            chunks[info.chunk_id] = info
        index = cls(folder, config, docs, chunks, manifest.get("embedder"), embedder,
                    generation, store, manifest.get("domain_embedder"))
        keyword = keyword_path(folder, generation)
        if (keyword / "chunk_ids.txt").exists():
            index._keyword = KeywordIndex.load(keyword, index.analyzer)
        return index

    def reopen(self) -> RagIndex | None:
        """The newest published generation when it is not this one's (same embedder, and the
        same store connection when the store settings did not change), else None."""
        manifest = read_manifest(self.folder)
        if int(manifest["generation"]) == self.generation:
            return None
        fresh = RagIndex.open(self.folder, self._embedder)
        if (fresh.config.store, fresh.config.qdrant_location) == (self.config.store,
                                                                 self.config.qdrant_location):
            fresh._store = self._store
        return fresh

    def save(self) -> None:
        """Publish the next generation: its keyword index and chunk table under their own
        names, then the manifest naming them, last. A kill anywhere leaves the last one."""
        generation = self.generation + 1
        self.keyword.save(keyword_path(self.folder, generation))
        atomic_write_jsonl(chunks_path(self.folder, generation),
                           (asdict(c) for c in self.chunks.values()))
        write_manifest(self.folder, {
            "version": FORMAT_VERSION, "generation": generation, "config": to_dict(self.config),
            "embedder": self.embedder_name, "domain_embedder": self.domain_name,
            "chunk_count": len(self.chunks),
            "docs": [asdict(d) for d in self.docs.values()]})
        self.generation = generation
        clear_pending(self.folder)  # the store and the published manifest agree again
        prune_generations(self.folder, generation)

    def repair(self) -> int:
        """Bring the vector store back to this manifest after a killed write: rows of
        documents it was writing, and rows the manifest does not list, are deleted, and the
        manifest's chunks missing from the store re-added (vectors from the cache). Returns
        the number of documents repaired."""
        suspects = set(pending(self.folder))
        for embedder, store in self.spaces():
            suspects |= self._repair_space(embedder, store, set(suspects))
        clear_pending(self.folder)
        return len(suspects)

    def _repair_space(self, embedder: Embedder, store: VectorStore, suspects: set[str]
                      ) -> set[str]:
        """Repair one embedding space's store; returns the documents it rewrote."""
        if not suspects and store.count() == len(self.chunks):
            return set()
        rows = store.rows()
        suspects |= {doc_id for chunk_id, doc_id in rows.items() if chunk_id not in self.chunks}
        suspects |= {c.doc_id for c in self.chunks.values() if c.chunk_id not in rows}
        if not suspects and len(rows) != store.count():  # duplicated rows: all again
            suspects = set(self.docs)
        doc_ids = sorted(suspects)
        store.delete_docs(doc_ids)
        restored = [(self.docs[d], [self.chunks[c] for c in self.docs[d].chunks])
                    for d in doc_ids if d in self.docs]
        if restored:
            cache = EmbeddingCache(self.folder / "embeddings.npz")
            vectors = cache.embed(embedder, [c.searchable for _, cs in restored for c in cs],
                                  progress=False)
            store.upsert(stored_chunks(restored), vectors)
            cache.save()
        return suspects

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
    def domain_embedder(self) -> Embedder | None:
        """The embedder lmforge trained on this index (``rag train-embedder``), if any."""
        if self.domain_name is None:
            return None
        if self._domain is None:
            self._domain = DomainEmbedder(model_folder(self.folder))
        if self._domain.name != self.domain_name:
            raise RagIndexError(f"{self.folder}: its vectors were made by domain embedder "
                                f"{self.domain_name}, the folder now holds {self._domain.name}; "
                                "re-run rag train-embedder")
        return self._domain

    def _domain_space(self, embedder: Embedder) -> VectorStore:
        if self._domain_store is None:
            self._domain_store = open_store(self.config.store, self.folder, embedder.dim,
                                            self.config.qdrant_location, DOMAIN_SPACE)
        return self._domain_store

    def spaces(self) -> list[tuple[Embedder, VectorStore]]:
        """Every embedding space of the index: the general embedder's, then the domain one's."""
        spaces = [(self.embedder, self.store)]
        domain = self.domain_embedder
        if domain is not None:
            spaces.append((domain, self._domain_space(domain)))
        return spaces

    def attach_domain_embedder(self, embedder: Embedder, progress: bool = True) -> int:
        """Embed every chunk with a newly trained domain embedder into a fresh table of its
        own and publish it; returns the number of chunks embedded. Until the manifest names
        it, readers keep the previous one (whose model folder the caller replaced last)."""
        store = open_store(self.config.store, self.folder, embedder.dim,
                           self.config.qdrant_location, DOMAIN_SPACE)
        store.delete_docs(sorted(set(store.rows().values())))
        cache = EmbeddingCache(self.folder / "embeddings.npz")
        changed = [(info, [self.chunks[c] for c in info.chunks]) for info in self.docs.values()]
        vectors = cache.embed(embedder, [c.searchable for _, cs in changed for c in cs],
                              progress=progress)
        store.upsert(stored_chunks(changed), vectors)
        self._domain, self._domain_store, self.domain_name = embedder, store, embedder.name
        cache.save(keep=self._live_keys())
        self.save()
        return len(vectors)

    def _live_keys(self) -> set[str]:
        return {text_key(embedder, c.searchable) for embedder, _ in self.spaces()
                for c in self.chunks.values()}

    @property
    def keyword(self) -> KeywordIndex:
        """BM25 over every chunk: what operators search."""
        if self._keyword is None:
            self._rebuild_keyword()
        assert self._keyword is not None
        return self._keyword

    def _rebuild_keyword(self) -> None:
        ids = list(self.chunks)
        self._keyword = KeywordIndex.build(self.analyzer, ids, [self.chunks[i] for i in ids])
        self._lexical = None
        self._expander = None
        self._tenants.clear()

    def tenant_keyword(self, tenant: str) -> KeywordIndex:
        """BM25 over the documents a user of ``tenant`` could read at all (their tenant's,
        and under ``public`` every document without principals), built on first use."""
        return self._tenants.keyword(tenant, self.docs, self.chunks, self.config.default_access,
                                     self.analyzer, lambda: self.keyword)

    def lexical_for(self, access: Access | None = None) -> LexicalFeatures:
        """The coverage statistics ``access`` is judged with (no-answer gate, reranker): over
        every chunk for operators, over what their tenant could read for users."""
        if access is None or access.operator:
            return self.lexical
        return self._tenants.lexical(access.home, self.docs, self.chunks,
                                     self.config.default_access, self.analyzer,
                                     lambda: self.lexical)

    @property
    def expander(self) -> Expander:
        """Rule-made rewrites of questions (aliases of the glossary and of the documents,
        numerals, clause numbers), learned from this generation's chunks on first use."""
        if self._expander is None:
            entries = load_glossary(Path(self.config.glossary)) if self.config.glossary else []
            self._expander = Expander.build(entries, (c.text for c in self.chunks.values()))
        return self._expander

    @property
    def lexical(self) -> LexicalFeatures:
        """Term statistics of every chunk (operators'), built once and shared by the reranker
        and the no-answer gate (building them reads every chunk)."""
        if self._lexical is None:
            self._lexical = LexicalFeatures(self.analyzer, ((c.doc_id, c.searchable)
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
            chunks = document_chunks(doc, self.config, measure)
            if not chunks:
                report.problems.append(f"{doc.doc_id}: no text to index, skipped")
                continue
            report.problems += acl_problems(doc.doc_id, doc.meta, self.config.default_access)
            info = DocInfo(doc.doc_id, digest, doc.source, dict(doc.meta))
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
        texts = [c.searchable for _, chunks in changed for c in chunks]
        before = len(cache.vectors)
        vectors = [cache.embed(embedder, texts, progress=progress)
                   for embedder, _ in self.spaces()]
        report.embedded = len(cache.vectors) - before
        self.embedder_name = self.embedder.name
        for info, _ in changed:
            self._forget(info.doc_id)
        for info, chunks in changed:
            self.docs[info.doc_id] = info
            self.chunks.update((chunk.chunk_id, chunk) for chunk in chunks)
        mark_pending(self.folder, [info.doc_id for info, _ in changed])
        for (_, store), space_vectors in zip(self.spaces(), vectors, strict=True):
            store.upsert(stored_chunks(changed), space_vectors)
        cache.save(keep=self._live_keys())
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
            mark_pending(self.folder, present)
            for _, store in self.spaces():
                store.delete_docs(present)
            for doc_id in present:
                self._forget(doc_id)
            self._rebuild_keyword()
        return len(present)

    # ---- access ---------------------------------------------------------------------------
    def readable(self, access: Access) -> set[str] | None:
        """The documents ``access`` may read, by this manifest; None: every one."""
        if access.operator and not access.filtered:
            return None
        policy = self.config.default_access
        return {d.doc_id for d in self.docs.values()
                if access.selects(d.meta) and may_read(access, d.tenant, d.acl, policy)}

    # ---- the two retrievers ---------------------------------------------------------------
    def dense(self, question: str, k: int, access: Access | None = None,
              space: str = "dense", vector: np.ndarray | None = None
              ) -> list[tuple[str, float]]:
        """Nearest chunks among the readable ones in one embedding space (``"dense"``: the
        general embedder, ``"domain"``: the trained one; ``vector``: the question's, when the
        caller has it already); rows this manifest does not list (a newer or torn write) are
        dropped, and access is checked again against the manifest."""
        if not self.chunks:
            return []
        readable = self.readable(access or Access())
        if readable is not None and not readable:
            return []
        embedder, store = self.space(space)
        if vector is None:
            vector = embedder.embed_queries([question])[0]
        where = None if readable is None else StoreFilter(doc_ids=sorted(readable))
        return [(chunk_id, score) for chunk_id, score in store.search(vector, k, where)
                if chunk_id in self.chunks
                and (readable is None or self.chunks[chunk_id].doc_id in readable)]

    def space(self, name: str) -> tuple[Embedder, VectorStore]:
        if name == "dense":
            return self.embedder, self.store
        domain = self.domain_embedder if name == DOMAIN_SPACE else None
        if domain is None:
            raise RagIndexError(f"{self.folder}: no '{name}' embedding space (spaces: dense"
                                f"{', domain' if self.domain_name else ''}; "
                                "rag train-embedder adds the domain one)")
        return domain, self._domain_space(domain)

    def keyword_search(self, question: str, k: int, access: Access | None = None
                       ) -> list[tuple[str, float]]:
        access = access or Access()
        keyword = self.keyword if access.operator else self.tenant_keyword(access.home)
        readable = self.readable(access)
        mask = None if readable is None else np.fromiter(
            (self.chunks[i].doc_id in readable for i in keyword.chunk_ids), dtype=bool,
            count=len(keyword.chunk_ids))
        scores = keyword.scores(question, mask)
        order = np.argsort(-scores, kind="stable")[:k]
        ids = keyword.chunk_ids
        return [(ids[i], float(scores[i])) for i in order if scores[i] > 0]
