"""Vector stores behind one ``VectorStore`` interface.

The default is LanceDB, embedded (no server): a real persistent database in the index folder,
with filters evaluated inside the query (``prefilter``: the top k are chosen among the rows a user
may read, never cut down afterwards), ANN indexes (IVF-PQ) once a table is large enough to need
one, and versioned, crash-safe writes. For teams that outgrow one machine, Qdrant: the same
interface over ``qdrant-client``, a local folder or a server URL, with payload filters.

Rows are chunks: id, document id, tenant, ACL principals, and the vector. The index decides
who may read what from its own manifest (``rag/access.py``) and arrives here with the readable
documents as a ``doc_ids`` condition, so every backend supports every filter the same way and a
row the manifest does not know (a torn or newer write) is never trusted for access.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import numpy as np

ANN_MIN_ROWS = 50_000  # below this an exact scan is fast and exact; above it, IVF-PQ


@dataclass
class StoreFilter:
    """Conditions ANDed inside the query; None means unrestricted."""

    doc_ids: Sequence[str] | None = None
    tenant: str | None = None
    principals: Sequence[str] | None = None  # the user and their groups: rows whose ACL has any


@dataclass
class StoredChunk:
    chunk_id: str
    doc_id: str
    tenant: str
    acl: list[str]


class VectorStore(Protocol):
    def upsert(self, chunks: Sequence[StoredChunk], vectors: np.ndarray) -> None: ...

    def delete_docs(self, doc_ids: Sequence[str]) -> None: ...

    def search(self, vector: np.ndarray, k: int, where: StoreFilter | None = None
               ) -> list[tuple[str, float]]: ...

    def count(self) -> int: ...

    def rows(self) -> dict[str, str]: ...


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def lance_where(where: StoreFilter | None) -> str | None:
    if where is None:
        return None
    parts = []
    if where.doc_ids is not None:
        parts.append(f"doc_id IN ({_sql_list(where.doc_ids)})" if where.doc_ids else "false")
    if where.tenant is not None:
        parts.append(f"tenant = {_sql_list([where.tenant])}")
    if where.principals is not None:
        parts.append(f"array_has_any(acl, [{_sql_list(where.principals)}])"
                     if where.principals else "false")
    return " AND ".join(parts) or None


class LanceStore:
    def __init__(self, folder: Path, dim: int, table: str = "chunks") -> None:
        import lancedb
        import pyarrow as pa

        self.dim = dim
        # every read sees the latest committed version, also one another process wrote
        self._db = lancedb.connect(str(folder), read_consistency_interval=timedelta(0))
        self._schema = pa.schema([
            pa.field("id", pa.string()), pa.field("doc_id", pa.string()),
            pa.field("tenant", pa.string()), pa.field("acl", pa.list_(pa.string())),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ])
        names = self._db.list_tables()
        names = getattr(names, "tables", names)
        self._table = (self._db.open_table(table) if table in names
                       else self._db.create_table(table, schema=self._schema))

    def upsert(self, chunks: Sequence[StoredChunk], vectors: np.ndarray) -> None:
        if not chunks:
            return
        self.delete_docs(sorted({c.doc_id for c in chunks}))
        self._table.add([{"id": c.chunk_id, "doc_id": c.doc_id, "tenant": c.tenant,
                          "acl": c.acl, "vector": v.tolist()}
                         for c, v in zip(chunks, vectors, strict=True)])
        rows = self.count()
        if rows >= ANN_MIN_ROWS and not self._table.list_indices():
            self._table.create_index(metric="cosine", vector_column_name="vector")

    def delete_docs(self, doc_ids: Sequence[str]) -> None:
        for start in range(0, len(doc_ids), 500):
            self._table.delete(f"doc_id IN ({_sql_list(doc_ids[start:start + 500])})")

    def search(self, vector: np.ndarray, k: int, where: StoreFilter | None = None
               ) -> list[tuple[str, float]]:
        query = self._table.search(vector.tolist(), vector_column_name="vector")
        query = query.distance_type("cosine").limit(k).select(["id", "_distance"])  # type: ignore[attr-defined]
        condition = lance_where(where)
        if condition:
            query = query.where(condition, prefilter=True)
        return [(row["id"], 1.0 - float(row["_distance"])) for row in query.to_list()]

    def count(self) -> int:
        return int(self._table.count_rows())

    def rows(self) -> dict[str, str]:
        """Chunk id -> document id of every row (to repair the store against a manifest)."""
        table = self._table.search().select(["id", "doc_id"]).limit(None).to_arrow()
        return dict(zip(table["id"].to_pylist(), table["doc_id"].to_pylist(), strict=True))


def point_id(chunk_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, chunk_id))


class QdrantStore:
    """Qdrant through ``qdrant-client``: ``location`` is a folder (local mode, the same API a
    server speaks) or an ``http(s)://`` URL."""

    def __init__(self, location: str, dim: int, collection: str = "lmforge_chunks") -> None:
        from qdrant_client import QdrantClient, models

        self._models = models
        remote = location.startswith(("http://", "https://"))
        self.collection = collection
        self._client = QdrantClient(url=location) if remote else QdrantClient(path=location)
        if not self._client.collection_exists(self.collection):
            self._client.create_collection(self.collection, vectors_config=models.VectorParams(
                size=dim, distance=models.Distance.COSINE))
            for key in ("doc_id", "tenant", "acl") if remote else ():  # local mode scans
                self._client.create_payload_index(self.collection, key,
                                                  models.PayloadSchemaType.KEYWORD)

    def _filter(self, where: StoreFilter | None):  # noqa: ANN202
        m = self._models
        if where is None:
            return None
        must = []
        for key, values in (("doc_id", where.doc_ids), ("acl", where.principals),
                            ("tenant", None if where.tenant is None else [where.tenant])):
            if values is not None:
                must.append(m.FieldCondition(key=key, match=m.MatchAny(any=list(values))))
        return m.Filter(must=must) if must else None

    def upsert(self, chunks: Sequence[StoredChunk], vectors: np.ndarray) -> None:
        if not chunks:
            return
        self.delete_docs(sorted({c.doc_id for c in chunks}))
        points = [self._models.PointStruct(
            id=point_id(c.chunk_id), vector=v.tolist(),
            payload={"id": c.chunk_id, "doc_id": c.doc_id, "tenant": c.tenant, "acl": c.acl})
            for c, v in zip(chunks, vectors, strict=True)]
        self._client.upsert(self.collection, points=points)

    def delete_docs(self, doc_ids: Sequence[str]) -> None:
        if doc_ids:
            selector = self._models.FilterSelector(filter=self._filter(StoreFilter(doc_ids)))
            self._client.delete(self.collection, points_selector=selector)

    def search(self, vector: np.ndarray, k: int, where: StoreFilter | None = None
               ) -> list[tuple[str, float]]:
        if where is not None and any(v is not None and len(v) == 0
                                     for v in (where.doc_ids, where.principals)):
            return []  # MatchAny([]) would mean "no condition" to some versions
        points = self._client.query_points(self.collection, query=vector.tolist(), limit=k,
                                           query_filter=self._filter(where)).points
        return [(str(p.payload["id"]), float(p.score)) for p in points if p.payload]

    def count(self) -> int:
        return int(self._client.count(self.collection).count)

    def rows(self) -> dict[str, str]:
        found: dict[str, str] = {}
        offset = None
        while True:
            points, offset = self._client.scroll(self.collection, limit=1000, offset=offset,
                                                 with_payload=["id", "doc_id"],
                                                 with_vectors=False)
            found.update((str(p.payload["id"]), str(p.payload["doc_id"]))
                         for p in points if p.payload)
            if offset is None:
                return found


def open_store(backend: str, folder: Path, dim: int, location: str = "", space: str = ""
               ) -> VectorStore:
    """The store of one embedding space of the index in ``folder``: the general embedder's
    (``space`` empty) or another one's (e.g. ``"domain"``), each in its own table or collection
    (a local Qdrant folder is locked by one client, so each space has its own folder)."""
    suffix = f"_{space}" if space else ""
    if backend == "lancedb":
        return LanceStore(folder / "lancedb", dim, f"chunks{suffix}")
    if backend == "qdrant":
        remote = location.startswith(("http://", "https://"))
        local = (location or str(folder / "qdrant")) + ("" if remote else suffix)
        return QdrantStore(local, dim, f"lmforge_chunks{suffix}")
    raise ValueError(f"unknown vector store '{backend}' (expected 'lancedb' or 'qdrant')")
