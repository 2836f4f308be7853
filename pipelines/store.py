"""One point-store interface over the real Qdrant engine, with two adapters: embedded (Edge) and server (client).

Why: ragops indexes chunks with a dense and a BM25 sparse vector and searches them with payload filters, in process
on one machine and against a Qdrant server or cluster in production. Both must behave the same (same payload
schema, named vectors, IDF, filters, fusion), so everything above this module speaks :class:`PointStore` and never
a Qdrant class:

- :class:`EdgeStore` runs Qdrant's own engine in this process (``qdrant-edge-py``, pinned: it is beta). One shard per
  directory, and a directory must be open once at a time (the engine holds its files and WAL), so readers of an
  immutable version open their own copy (see :mod:`pipelines.index`). Searches are exact: shards are created with
  HNSW disabled and searched with ``exact=True``, so results equal brute force; ``optimize()`` then only vacuums
  deleted points, and since it holds the GIL for seconds only writers call it (:meth:`EdgeStore.compact`).
- :class:`ClientStore` speaks to one collection through ``qdrant-client`` (a server, a cluster, or qdrant-client's
  in-memory mode in tests).

Filters are :class:`PointFilter`: an AND of :class:`Match` conditions, each "the payload value (or one of the list's
values) is any of these"; a match may also accept points without the key (``acl``: no list means public). They are
applied inside the engine's search (top-k is filled with permitted points only), helped by keyword payload indexes
(``tenant`` is a tenant index). ``window`` is the version range a point must be alive in (server-mode versioning by
payload, :mod:`pipelines.index`); it also scopes the IDF corpus, so BM25 weights are those of that version alone.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipelines.errors import IndexError_
from pipelines.sparse import SparseVector

if TYPE_CHECKING:
    import qdrant_edge
    from qdrant_client import QdrantClient
    from qdrant_client.http import models as qm

logger = logging.getLogger(__name__)

DENSE_VECTOR = "text-dense"
SPARSE_VECTOR = "text-sparse"
V_FROM = "_ragops_v_from"
"""Server mode: the version a point appeared in (points of later, unpublished versions are invisible)."""
V_TO = "_ragops_v_to"
"""Server mode: the version a point was superseded or deleted in (absent while it is alive)."""
CHUNK_KEY = "_ragops_chunk"
"""Server mode: the chunk id a physical point carries (physical ids are per version, chunk ids are not)."""
Payload = bool | Sequence[str]
"""Which payload to return: none, all, or these keys."""
KEYWORD_KEYS = ("doc_id", "source", "source_key", "acl", CHUNK_KEY)
TENANT_KEY = "tenant"
_BATCH = 512
_NEVER_INDEX_KB = 2**31 - 1
_EXACT: Any = None


@dataclass(frozen=True)
class Match:
    """``key`` holds any of ``values`` (a list payload matches when one element does); ``or_missing`` also admits
    points without the key (e.g. no ``acl`` means visible to everyone)."""

    key: str
    values: tuple[str, ...]
    or_missing: bool = False


@dataclass(frozen=True)
class Range:
    """``gt < payload[key] <= lte`` (either bound may be open)."""

    key: str
    gt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class PointFilter:
    """AND of matches and ranges, and (versioning by payload) alive in version ``window`` when it is set."""

    matches: tuple[Match, ...] = ()
    window: int | None = None
    ranges: tuple[Range, ...] = ()
    missing: tuple[str, ...] = ()
    """Keys the payload must not have."""
    live_idf: bool = False
    """Count IDF over live points only: an engine may still count deleted points until it vacuums segments."""

    @classmethod
    def of(cls, filters: Mapping[str, Sequence[str]] | None, *, or_missing: Sequence[str] = ()) -> PointFilter:
        """From ``key -> allowed values``; keys in ``or_missing`` also admit points without them."""
        items = sorted((filters or {}).items())
        return cls(tuple(Match(k, tuple(v), k in or_missing) for k, v in items))

    def with_window(self, version: int | None) -> PointFilter:
        """The same filter restricted to points alive in ``version``."""
        return PointFilter(self.matches, version, self.ranges, self.missing, self.live_idf)

    def also(self, *matches: Match) -> PointFilter:
        """The same filter with more matches."""
        return PointFilter((*self.matches, *matches), self.window, self.ranges, self.missing, self.live_idf)

    @property
    def empty(self) -> bool:
        """Whether it admits every point."""
        return not self.matches and self.window is None and not self.ranges and not self.missing


@dataclass(frozen=True)
class StoredPoint:
    """A point as written or read back; vectors and payload are None when not requested."""

    id: str
    dense: np.ndarray | None = None
    sparse: SparseVector | None = None
    payload: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Hit:
    """One search result: point id, engine score, payload when asked for."""

    id: str
    score: float
    payload: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class HybridRequest:
    """Dense and sparse searches, each ``depth`` deep, fused by weighted reciprocal rank in the engine."""

    dense: np.ndarray
    sparse: SparseVector
    depth: int
    rrf_k: int = 60
    weights: tuple[float, float] = (1.0, 1.0)


@dataclass(frozen=True)
class StoreSchema:
    """What a store is created with: the dense dimension (cosine) and the payload keys to index."""

    dim: int
    keyword_keys: tuple[str, ...] = KEYWORD_KEYS
    tenant_key: str = TENANT_KEY
    integer_keys: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Placement:
    """How a server or cluster lays a new collection out: shards over nodes, copies of each shard, and how many
    copies acknowledge a write. None leaves the choice to Qdrant's defaults. Only :class:`ClientStore` takes it: the
    embedded engine is one shard in one process, so there is nothing to place."""

    shard_number: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None


class PointStore(Protocol):
    """What ragops needs of a vector store; :class:`EdgeStore` and :class:`ClientStore` implement it."""

    def upsert(self, points: Sequence[StoredPoint]) -> int:
        """Insert or replace points (dense, sparse and payload all required)."""
        ...

    def delete(self, ids: Sequence[str]) -> None:
        """Remove points by id; missing ids are ignored."""
        ...

    def delete_where(self, flt: PointFilter) -> None:
        """Remove every point the filter admits."""
        ...

    def set_payload_where(self, flt: PointFilter, payload: Mapping[str, Any]) -> None:
        """Set payload keys on every point the filter admits."""
        ...

    def unset_payload_where(self, flt: PointFilter, keys: Sequence[str]) -> None:
        """Remove payload keys from every point the filter admits."""
        ...

    def count(self, flt: PointFilter | None = None) -> int:
        """Exact number of points the filter admits."""
        ...

    def retrieve(self, ids: Sequence[str], *, dense: bool = False, payload: Payload = True) -> list[StoredPoint]:
        """Points by id (missing ids are left out)."""
        ...

    def scroll(
        self, flt: PointFilter | None = None, *, dense: bool = False, sparse: bool = False, payload: Payload = True
    ) -> Iterator[StoredPoint]:
        """Every point the filter admits, in id order, page by page."""
        ...

    def search_dense(
        self, vector: np.ndarray, *, limit: int, flt: PointFilter | None = None, payload: Payload = False
    ) -> list[Hit]:
        """Top ``limit`` by cosine similarity, best first."""
        ...

    def search_sparse(
        self, vector: SparseVector, *, limit: int, flt: PointFilter | None = None, payload: Payload = False
    ) -> list[Hit]:
        """Top ``limit`` by IDF-weighted dot product (points sharing no term are left out), best first."""
        ...

    def search_hybrid(
        self, request: HybridRequest, *, limit: int, flt: PointFilter | None = None, payload: Payload = False
    ) -> list[Hit]:
        """Dense and sparse prefetches fused by weighted RRF inside the engine; scores are fused scores."""
        ...

    def flush(self) -> None:
        """Make every write durable."""
        ...

    def compact(self) -> None:
        """Reclaim deleted points where the engine does not do it by itself (may take seconds: writers only)."""
        ...

    def close(self) -> None:
        """Release the store (idempotent)."""
        ...


def _with_payload(payload: Payload) -> Any:
    return payload if isinstance(payload, bool) else list(payload)


def _point_id(value: object) -> str:
    return str(value)


def _check_dense(vector: np.ndarray, dim: int | None) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or (dim is not None and array.shape[0] != dim):
        raise IndexError_(f"query vector has shape {array.shape}, the index expects ({dim},)")
    if not np.all(np.isfinite(array)):
        raise IndexError_("query vector contains NaN or infinity")
    return array


# ------------------------------------------------------------------------------------------------------ Edge
class EdgeStore:
    """The Qdrant engine in process, one shard directory (see the module docstring for the one-open rule).

    Usage example::

        store = EdgeStore.create(path, StoreSchema(dim=384))
        store.upsert([StoredPoint(id, dense=vec, sparse=SparseVector([3], [1.0]), payload={"tenant": "a"})])
        hits = store.search_dense(vec, limit=10, flt=PointFilter.of({"tenant": ["a"]}))
        store.close()
    """

    def __init__(self, shard: qdrant_edge.EdgeShard, path: Path, dim: int | None) -> None:
        self._shard: qdrant_edge.EdgeShard | None = shard
        self.path = path
        self.dim = dim
        self._dirty = False
        """Written since the last flush (a flush with nothing to write still syncs the engine's files: 5 ms)."""

    def _update(self, operation: qdrant_edge.UpdateOperation) -> None:
        self._dirty = True
        self.shard.update(operation)

    @classmethod
    def create(cls, path: Path, schema: StoreSchema, *, wal: bool = True) -> EdgeStore:
        """A new empty shard at ``path`` with ragops' named vectors and payload indexes.

        ``wal=False`` for a staging shard that is thrown away if the run dies: writes skip the write-ahead log and
        become durable at :meth:`flush` (the publish step flushes before switching).
        """
        import qdrant_edge as qe

        config = qe.EdgeConfig(
            vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=schema.dim, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            # Never build HNSW (threshold in KB): searches stay exact, and optimize() only vacuums deleted points.
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=_NEVER_INDEX_KB),
            wal_enabled=wal,
        )
        shard = qe.EdgeShard.create(str(path), config)
        store = cls(shard, path, schema.dim)
        updates = [qe.UpdateOperation.create_field_index(schema.tenant_key, qe.KeywordIndexParams(is_tenant=True))]
        updates += [qe.UpdateOperation.create_field_index(k, qe.PayloadSchemaType.Keyword) for k in schema.keyword_keys]
        updates += [qe.UpdateOperation.create_field_index(k, qe.PayloadSchemaType.Integer) for k in schema.integer_keys]
        for update in updates:
            shard.update(update)
        return store

    @classmethod
    def load(cls, path: Path) -> EdgeStore:
        """Open an existing shard (raises IndexError_ when another process or object holds it)."""
        import qdrant_edge as qe

        try:
            shard = qe.EdgeShard.load(str(path))
        except Exception as exc:  # the binding raises a bare RuntimeError/OSError with the engine's message
            raise IndexError_(f"cannot open the index shard at {path}: {exc}") from exc
        return cls(shard, path, None)

    @property
    def shard(self) -> qdrant_edge.EdgeShard:
        if self._shard is None:
            raise IndexError_(f"the index shard at {self.path} is closed")
        return self._shard

    # ------------------------------------------------------------------------------------------------- filters
    @staticmethod
    def _filter(flt: PointFilter | None) -> qdrant_edge.Filter | None:
        import qdrant_edge as qe

        if flt is None or flt.empty:
            return None
        must: list[Any] = []
        for match in flt.matches:
            cond = qe.FieldCondition(key=match.key, match=qe.MatchAny(any=list(match.values)))
            must.append(qe.Filter(should=[cond, qe.IsEmptyCondition(key=match.key)]) if match.or_missing else cond)
        for rng in flt.ranges:
            must.append(qe.FieldCondition(key=rng.key, range=qe.RangeFloat(gt=rng.gt, lte=rng.lte)))
        must.extend(qe.IsEmptyCondition(key=key) for key in flt.missing)
        if flt.window is not None:
            must.append(qe.FieldCondition(key=V_FROM, range=qe.RangeFloat(lte=float(flt.window))))
            alive = qe.FieldCondition(key=V_TO, range=qe.RangeFloat(gt=float(flt.window)))
            must.append(qe.Filter(should=[alive, qe.IsEmptyCondition(key=V_TO)]))
        return qe.Filter(must=must)

    def _params(self, flt: PointFilter | None) -> qdrant_edge.SearchParams:
        import qdrant_edge as qe

        global _EXACT
        if _EXACT is None:
            _EXACT = qe.SearchParams(exact=True)

        # exact=True: shards made elsewhere (or by an older ragops) may hold HNSW segments; ours never do, so it
        # costs nothing and guarantees brute-force rankings.
        if flt is None or (flt.window is None and not flt.live_idf):
            return _EXACT
        corpus = self._filter(PointFilter(window=flt.window)) if flt.window is not None else qe.Filter()
        return qe.SearchParams(exact=True, idf=qe.IdfParams(corpus=corpus))

    # -------------------------------------------------------------------------------------------------- writes
    def upsert(self, points: Sequence[StoredPoint]) -> int:
        import qdrant_edge as qe

        for start in range(0, len(points), _BATCH):
            batch = []
            for p in points[start : start + _BATCH]:
                if p.dense is None or p.sparse is None or p.payload is None:
                    raise IndexError_(f"point {p.id} lacks a vector or its payload")
                if self.dim is not None and len(p.dense) != self.dim:
                    raise IndexError_(f"point {p.id} has dimension {len(p.dense)}, the index expects {self.dim}")
                vector: dict[str, Any] = {
                    DENSE_VECTOR: np.asarray(p.dense, dtype=np.float32).tolist(),
                    SPARSE_VECTOR: qe.SparseVector(indices=list(p.sparse.indices), values=list(p.sparse.values)),
                }
                batch.append(qe.Point(id=uuid.UUID(p.id), vector=vector, payload=dict(p.payload)))
            self._update(qe.UpdateOperation.upsert_points(batch))
        return len(points)

    def delete(self, ids: Sequence[str]) -> None:
        import qdrant_edge as qe

        for start in range(0, len(ids), 1024):
            self._update(qe.UpdateOperation.delete_points([uuid.UUID(i) for i in ids[start : start + 1024]]))

    def _update_where(
        self, flt: PointFilter, operation: Callable[[qdrant_edge.Filter], qdrant_edge.UpdateOperation]
    ) -> None:
        """A write by filter, skipped when nothing matches: the engine logs even an empty one, and the shard would
        then need a flush (the usual case for a writer's undo of unpublished runs and for garbage collection)."""
        import qdrant_edge as qe

        if self.count(flt):
            self._update(operation(self._filter(flt) or qe.Filter()))

    def delete_where(self, flt: PointFilter) -> None:
        import qdrant_edge as qe

        self._update_where(flt, qe.UpdateOperation.delete_points_by_filter)

    def set_payload_where(self, flt: PointFilter, payload: Mapping[str, Any]) -> None:
        import qdrant_edge as qe

        self._update_where(flt, lambda where: qe.UpdateOperation.set_payload_by_filter(where, dict(payload)))

    def unset_payload_where(self, flt: PointFilter, keys: Sequence[str]) -> None:
        import qdrant_edge as qe

        self._update_where(flt, lambda where: qe.UpdateOperation.delete_payload_by_filter(where, list(keys)))

    # --------------------------------------------------------------------------------------------------- reads
    def count(self, flt: PointFilter | None = None) -> int:
        import qdrant_edge as qe

        return int(self.shard.count(qe.CountRequest(filter=self._filter(flt), exact=True)))

    def _record(self, record: Any, *, dense: bool, sparse: bool, payload: Payload) -> StoredPoint:
        vectors = record.vector if isinstance(record.vector, dict) else {}
        dense_vec = np.asarray(vectors[DENSE_VECTOR], dtype=np.float32) if dense and DENSE_VECTOR in vectors else None
        sparse_vec = None
        if sparse and SPARSE_VECTOR in vectors:
            raw = vectors[SPARSE_VECTOR]
            sparse_vec = SparseVector(indices=list(raw.indices), values=list(raw.values))
        return StoredPoint(_point_id(record.id), dense_vec, sparse_vec, dict(record.payload or {}) if payload else None)

    def retrieve(self, ids: Sequence[str], *, dense: bool = False, payload: Payload = True) -> list[StoredPoint]:
        out: list[StoredPoint] = []
        with_vector: list[str] | bool = [DENSE_VECTOR] if dense else False
        for start in range(0, len(ids), 1024):
            records = self.shard.retrieve(
                [uuid.UUID(i) for i in ids[start : start + 1024]], _with_payload(payload), with_vector
            )
            out.extend(self._record(r, dense=dense, sparse=False, payload=payload) for r in records)
        return out

    def scroll(
        self, flt: PointFilter | None = None, *, dense: bool = False, sparse: bool = False, payload: Payload = True
    ) -> Iterator[StoredPoint]:
        import qdrant_edge as qe

        names = [n for n, on in ((DENSE_VECTOR, dense), (SPARSE_VECTOR, sparse)) if on]
        offset: Any = None
        while True:
            request = qe.ScrollRequest(
                offset=offset,
                limit=1024,
                filter=self._filter(flt),
                with_payload=_with_payload(payload),
                with_vector=names or False,
            )
            records, offset = self.shard.scroll(request)
            for record in records:
                yield self._record(record, dense=dense, sparse=sparse, payload=payload)
            if offset is None:
                return

    def _query(
        self, query: Any, *, limit: int, flt: PointFilter | None, payload: Payload, prefetches: Any = None
    ) -> list[Hit]:
        import qdrant_edge as qe

        request = qe.QueryRequest(
            limit=limit,
            query=query,
            prefetches=prefetches,
            filter=self._filter(flt),
            with_payload=_with_payload(payload),
            with_vector=False,
            params=self._params(flt),
        )
        hits = self.shard.query(request)
        return [Hit(_point_id(p.id), float(p.score), dict(p.payload or {}) if payload else None) for p in hits]

    def search_dense(
        self, vector: np.ndarray, *, limit: int, flt: PointFilter | None = None, payload: Payload = False
    ) -> list[Hit]:
        import qdrant_edge as qe

        query = qe.Query.Nearest(_check_dense(vector, self.dim).tolist(), using=DENSE_VECTOR)
        return self._query(query, limit=limit, flt=flt, payload=payload)

    def search_sparse(
        self, vector: SparseVector, *, limit: int, flt: PointFilter | None = None, payload: Payload = False
    ) -> list[Hit]:
        import qdrant_edge as qe

        if not vector.indices:
            return []
        query = qe.Query.Nearest(qe.SparseVector(list(vector.indices), list(vector.values)), using=SPARSE_VECTOR)
        return self._query(query, limit=limit, flt=flt, payload=payload)

    def search_hybrid(
        self, request: HybridRequest, *, limit: int, flt: PointFilter | None = None, payload: Payload = False
    ) -> list[Hit]:
        import qdrant_edge as qe

        dense = qe.Query.Nearest(_check_dense(request.dense, self.dim).tolist(), using=DENSE_VECTOR)
        sparse = qe.Query.Nearest(
            qe.SparseVector(list(request.sparse.indices), list(request.sparse.values)), using=SPARSE_VECTOR
        )
        inner = self._filter(flt)
        params = self._params(flt)
        prefetches = [
            qe.Prefetch(limit=request.depth, query=dense, filter=inner, params=params),
            qe.Prefetch(limit=request.depth, query=sparse, filter=inner, params=params),
        ]
        fusion = qe.Fusion.Rrf(k=request.rrf_k, weights=list(request.weights))
        return self._query(fusion, limit=limit, flt=flt, payload=payload, prefetches=prefetches)

    def flush(self) -> None:
        if self._dirty:
            self.shard.flush()
            self._dirty = False

    def compact(self) -> None:
        """Vacuum segments with many deleted points (Qdrant's optimizers; no HNSW, see :meth:`create`). Holds the
        GIL for seconds when it has work (SciFact with a third deleted: 2.1 s), so only writers call it."""
        if self.shard.optimize():
            self._dirty = True

    def close(self) -> None:
        if self._shard is not None:
            shard, self._shard = self._shard, None
            shard.close()


# ---------------------------------------------------------------------------------------------------- client
class ClientStore:
    """One collection through ``qdrant-client``: a Qdrant server or cluster (or its in-memory mode in tests).

    The client is borrowed: :meth:`close` does not close it (one client serves several collections).
    """

    def __init__(self, client: QdrantClient, collection: str, dim: int | None = None) -> None:
        self.client = client
        self.collection = collection
        self.dim = dim

    @classmethod
    def create(
        cls, client: QdrantClient, collection: str, schema: StoreSchema, *, placement: Placement | None = None
    ) -> ClientStore:
        """Create the collection with ragops' named vectors and payload indexes.

        Args:
            client: A server or cluster client (qdrant-client's local mode accepts and ignores ``placement``).
            collection: The collection to create.
            schema: Dense dimension and payload keys to index.
            placement: Shards and replication; fixed at creation (default: Qdrant's).
        """
        from qdrant_client import models

        placement = placement or Placement()
        client.create_collection(
            collection,
            vectors_config={DENSE_VECTOR: models.VectorParams(size=schema.dim, distance=models.Distance.COSINE)},
            sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            shard_number=placement.shard_number,
            replication_factor=placement.replication_factor,
            write_consistency_factor=placement.write_consistency_factor,
        )
        client.create_payload_index(
            collection,
            schema.tenant_key,
            field_schema=models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
        )
        for key in schema.keyword_keys:
            client.create_payload_index(collection, key, field_schema=models.PayloadSchemaType.KEYWORD)
        for key in schema.integer_keys:
            client.create_payload_index(collection, key, field_schema=models.PayloadSchemaType.INTEGER)
        return cls(client, collection, schema.dim)

    @staticmethod
    def _filter(flt: PointFilter | None) -> qm.Filter | None:
        from qdrant_client import models

        if flt is None or flt.empty:
            return None
        must: list[Any] = []
        for match in flt.matches:
            cond = models.FieldCondition(key=match.key, match=models.MatchAny(any=list(match.values)))
            if match.or_missing:
                empty = models.IsEmptyCondition(is_empty=models.PayloadField(key=match.key))
                must.append(models.Filter(should=[cond, empty]))
            else:
                must.append(cond)
        for rng in flt.ranges:
            must.append(models.FieldCondition(key=rng.key, range=models.Range(gt=rng.gt, lte=rng.lte)))
        must.extend(models.IsEmptyCondition(is_empty=models.PayloadField(key=key)) for key in flt.missing)
        if flt.window is not None:
            must.append(models.FieldCondition(key=V_FROM, range=models.Range(lte=flt.window)))
            alive = models.FieldCondition(key=V_TO, range=models.Range(gt=flt.window))
            must.append(models.Filter(should=[alive, models.IsEmptyCondition(is_empty=models.PayloadField(key=V_TO))]))
        return models.Filter(must=must)

    def _params(self, flt: PointFilter | None) -> qm.SearchParams | None:
        from qdrant_client import models

        if flt is None or (flt.window is None and not flt.live_idf):
            return None
        corpus = self._filter(PointFilter(window=flt.window)) if flt.window is not None else models.Filter()
        assert corpus is not None
        return models.SearchParams(idf=models.IdfCorpusParams(corpus=corpus))

    def upsert(self, points: Sequence[StoredPoint]) -> int:
        from qdrant_client import models

        for start in range(0, len(points), _BATCH):
            batch = []
            for p in points[start : start + _BATCH]:
                if p.dense is None or p.sparse is None or p.payload is None:
                    raise IndexError_(f"point {p.id} lacks a vector or its payload")
                if self.dim is not None and len(p.dense) != self.dim:
                    raise IndexError_(f"point {p.id} has dimension {len(p.dense)}, the index expects {self.dim}")
                vector: dict[str, Any] = {
                    DENSE_VECTOR: np.asarray(p.dense, dtype=np.float32).tolist(),
                    SPARSE_VECTOR: models.SparseVector(indices=list(p.sparse.indices), values=list(p.sparse.values)),
                }
                batch.append(models.PointStruct(id=p.id, vector=vector, payload=dict(p.payload)))
            self.client.upsert(self.collection, points=batch, wait=True)
        return len(points)

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_client import models

        for start in range(0, len(ids), 1024):
            selector = models.PointIdsList(points=list(ids[start : start + 1024]))
            self.client.delete(self.collection, points_selector=selector, wait=True)

    def delete_where(self, flt: PointFilter) -> None:
        from qdrant_client import models

        selector = models.FilterSelector(filter=self._filter(flt) or models.Filter())
        self.client.delete(self.collection, points_selector=selector, wait=True)

    def set_payload_where(self, flt: PointFilter, payload: Mapping[str, Any]) -> None:
        from qdrant_client import models

        self.client.set_payload(self.collection, dict(payload), points=self._filter(flt) or models.Filter(), wait=True)

    def unset_payload_where(self, flt: PointFilter, keys: Sequence[str]) -> None:
        from qdrant_client import models

        self.client.delete_payload(self.collection, list(keys), points=self._filter(flt) or models.Filter(), wait=True)

    def count(self, flt: PointFilter | None = None) -> int:
        return int(self.client.count(self.collection, count_filter=self._filter(flt), exact=True).count)

    @staticmethod
    def _record(record: Any, *, dense: bool, sparse: bool, payload: Payload) -> StoredPoint:
        vectors = record.vector if isinstance(record.vector, dict) else {}
        dense_vec = np.asarray(vectors[DENSE_VECTOR], dtype=np.float32) if dense and DENSE_VECTOR in vectors else None
        sparse_vec = None
        if sparse and SPARSE_VECTOR in vectors:
            raw = vectors[SPARSE_VECTOR]
            sparse_vec = SparseVector(indices=list(raw.indices), values=list(raw.values))
        return StoredPoint(str(record.id), dense_vec, sparse_vec, dict(record.payload or {}) if payload else None)

    def retrieve(self, ids: Sequence[str], *, dense: bool = False, payload: Payload = True) -> list[StoredPoint]:
        out: list[StoredPoint] = []
        for start in range(0, len(ids), 1024):
            records = self.client.retrieve(
                self.collection,
                ids=list(ids[start : start + 1024]),
                with_payload=_with_payload(payload),
                with_vectors=[DENSE_VECTOR] if dense else False,
            )
            out.extend(self._record(r, dense=dense, sparse=False, payload=payload) for r in records)
        return out

    def scroll(
        self, flt: PointFilter | None = None, *, dense: bool = False, sparse: bool = False, payload: Payload = True
    ) -> Iterator[StoredPoint]:
        names = [n for n, on in ((DENSE_VECTOR, dense), (SPARSE_VECTOR, sparse)) if on]
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                self.collection,
                scroll_filter=self._filter(flt),
                limit=1024,
                offset=offset,
                with_payload=_with_payload(payload),
                with_vectors=names or False,
            )
            for record in records:
                yield self._record(record, dense=dense, sparse=sparse, payload=payload)
            if offset is None:
                return

    def _query(self, *, limit: int, flt: PointFilter | None, payload: Payload, **kwargs: Any) -> list[Hit]:
        result = self.client.query_points(
            self.collection,
            limit=limit,
            query_filter=self._filter(flt),
            search_params=self._params(flt),
            with_payload=_with_payload(payload),
            with_vectors=False,
            **kwargs,
        )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {}) if payload else None) for p in result.points]

    def search_dense(
        self, vector: np.ndarray, *, limit: int, flt: PointFilter | None = None, payload: Payload = False
    ) -> list[Hit]:
        query = _check_dense(vector, self.dim).tolist()
        return self._query(limit=limit, flt=flt, payload=payload, query=query, using=DENSE_VECTOR)

    def search_sparse(
        self, vector: SparseVector, *, limit: int, flt: PointFilter | None = None, payload: Payload = False
    ) -> list[Hit]:
        from qdrant_client import models

        if not vector.indices:
            return []
        query = models.SparseVector(indices=list(vector.indices), values=list(vector.values))
        return self._query(limit=limit, flt=flt, payload=payload, query=query, using=SPARSE_VECTOR)

    def search_hybrid(
        self, request: HybridRequest, *, limit: int, flt: PointFilter | None = None, payload: Payload = False
    ) -> list[Hit]:
        from qdrant_client import models

        inner = self._filter(flt)
        params = self._params(flt)
        sparse = models.SparseVector(indices=list(request.sparse.indices), values=list(request.sparse.values))
        prefetch = [
            models.Prefetch(
                query=_check_dense(request.dense, self.dim).tolist(),
                using=DENSE_VECTOR,
                limit=request.depth,
                filter=inner,
                params=params,
            ),
            models.Prefetch(query=sparse, using=SPARSE_VECTOR, limit=request.depth, filter=inner, params=params),
        ]
        fusion = models.RrfQuery(rrf=models.Rrf(k=request.rrf_k, weights=list(request.weights)))
        return self._query(limit=limit, flt=flt, payload=payload, query=fusion, prefetch=prefetch)

    def flush(self) -> None:
        """Server writes are acknowledged with ``wait=True``, hence durable: nothing to do."""

    def compact(self) -> None:
        """A server runs its optimizers by itself."""

    def close(self) -> None:
        """The client is borrowed; its owner closes it."""
