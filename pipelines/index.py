"""The vector index: one logical collection whose versions are published atomically, at any scale.

Why versions: the query service must keep serving while an ingestion runs and must never see half an ingestion,
and a stack can pin an older version for rollback. Versions are kept **by payload** in one store, so publishing a
run costs what the run changed, never a copy of the collection:

- every point carries ``_ragops_v_from`` (the version it appeared in) and, once superseded or deleted,
  ``_ragops_v_to``; a version ``V`` is the points with ``v_from <= V < v_to``. A run writing version ``W`` only adds
  points with ``v_from = W`` and stamps ``v_to = W`` on the points it replaces, so readers of ``V < W`` see nothing
  change. Physical point ids are ``uuid5(chunk id, v_from)`` (a chunk rewritten in a later run is a new point); the
  chunk id rides in the payload.
- publishing records the manifest (document id -> content hash and chunk ids) and switches the published version
  in one atomic step. The manifest is kept the same way as the points, one row per document entry valid from one
  version to another (:mod:`pipelines.catalog`), so a publish writes the rows of the documents it changed, not the
  whole list. A run killed at any moment leaves points with ``v_from`` above the published version and ``v_to``
  stamps above it; the next writer removes both before it starts. Old versions beyond ``keep_versions`` are
  garbage-collected (points and rows no kept version sees).
- one writer per collection: the second one waits (``RAGOPS_QDRANT__WRITER_WAIT_SECONDS``) and then fails with
  :class:`WriterBusy`, naming the holder.

The two modes differ only in where the store and the catalog live:

- **Embedded** (default): the store is a Qdrant Edge shard ``<home>/qdrant/<collection>/head/`` (the real engine in
  process, :class:`pipelines.store.EdgeStore`); the catalog (published version, version records, document rows) is
  ``<home>/qdrant/<collection>/catalog.sqlite``, changed in one transaction per publish; the writer lock is an
  ``fcntl`` lock on ``.writer.lock``.
  A shard can be open once, so a reader copies the head (under a shared lock the writer takes exclusively around
  each write, so the copy is never torn), deletes from its copy every point not in its version, and then searches
  it with no version filter at all: its search speed and BM25 IDF are those of a collection holding that version
  alone.
- **Server** (``RAGOPS_QDRANT__URL``): the store is the Qdrant collection ``<collection>__data`` behind the alias
  ``<collection>``; the published and kept version numbers are the collection's metadata, and each version's
  :class:`IndexVersion` (embedder identity, chunking, BM25 avgdl) and document rows are points of
  ``<collection>__ragops``. Any process with the URL sees the same state; no local file is read. Readers add the
  version window to every filter and scope the IDF corpus to it (``SearchParams.idf``), so results equal those of a
  collection holding that version alone. The writer lock is a lease point in ``<collection>__ragops`` taken by a
  conditional upsert and renewed as the writer works. Both collections are created with the configured shards and
  replication (``RAGOPS_QDRANT__SHARD_NUMBER``, ``__REPLICATION_FACTOR``, ``__WRITE_CONSISTENCY_FACTOR``): the
  catalog and the lease must survive the loss of a node as well as the data does.

Each version records its embedder identity and chunking, and every writer and reader checks them, so a different
model can neither write into nor query it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from dataclasses import replace as replace_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.catalog import (
    POINT_NAMESPACE,
    Catalog,
    DocEntry,
    IndexVersion,
    Manifest,
    QdrantCatalog,
    SqliteCatalog,
    now,
)
from pipelines.chunk import ChunkingParams
from pipelines.embed import EmbedderIdentity
from pipelines.erasure import ErasureTarget
from pipelines.errors import IndexError_, WriterBusy
from pipelines.settings import PipelineSettings
from pipelines.sparse import SparseVector
from pipelines.store import (
    CHUNK_KEY,
    DENSE_VECTOR,
    SPARSE_VECTOR,
    TENANT_KEY,
    V_FROM,
    V_TO,
    ClientStore,
    EdgeStore,
    Hit,
    HybridRequest,
    Match,
    Placement,
    PointFilter,
    PointStore,
    Range,
    StoredPoint,
    StoreSchema,
)
from pipelines.types import Chunk

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

__all__ = [
    "DENSE_VECTOR",
    "SPARSE_VECTOR",
    "DocEntry",
    "IndexErasure",
    "IndexReader",
    "IndexVersion",
    "IndexWriter",
    "Manifest",
    "VectorIndex",
    "point_payload",
]

logger = logging.getLogger(__name__)

HEAD_DIR = "head"
_VERSION_KEYS = (V_FROM, V_TO, CHUNK_KEY)
DOC_KEY = "doc_id"
"""The payload key llama-index's node layout gives a chunk's document id (indexed as a keyword)."""


@dataclass(frozen=True)
class IndexErasure:
    """What :meth:`VectorIndex.erase` removed."""

    collection: str
    doc_ids: tuple[str, ...]
    sources: tuple[str, ...]
    """The erased documents' source files (for the caller to remove those ragops owns)."""
    points_removed: int
    versions_rewritten: tuple[int, ...]
    published: int | None
    """The version published without the erased documents (services follow it and drop their old copies)."""
    live_readers: int
    """Private reader copies still held by running processes (embedded mode): they hold the old data until their
    service follows ``published`` (within its poll interval) and deletes them."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (``ragops erase --json``)."""
        return asdict(self)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def point_payload(chunk: Chunk, *, source_key: str) -> dict[str, Any]:
    """The Qdrant payload of a chunk: llama-index's own node layout plus flat fields for filtering.

    Using ``node_to_metadata_dict`` means llama-index's ``QdrantVectorStore`` reads these points as ``TextNode``s
    with no adapter; the metadata keys are top-level payload keys, so tenant/source filters work in Qdrant.
    """
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
    from llama_index.core.vector_stores.utils import node_to_metadata_dict

    metadata: dict[str, Any] = {
        "title": chunk.title,
        "source": chunk.source,
        "source_key": source_key,
        "position": chunk.position,
        "n_tokens": chunk.n_tokens,
        "doc_hash": chunk.doc_hash,
    }
    metadata.update(chunk.metadata)
    node = TextNode(
        id_=chunk.chunk_id,
        text=chunk.text,
        metadata=metadata,
        excluded_embed_metadata_keys=[k for k in metadata if k != "title"],
        excluded_llm_metadata_keys=["source_key", "n_tokens", "doc_hash", "position"],
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=chunk.doc_id)},
    )
    return node_to_metadata_dict(node, remove_text=False, flat_metadata=False)


def physical_id(chunk_id: str, version: int) -> str:
    """The point id of ``chunk_id`` as written by ``version`` (a chunk rewritten later is another point)."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{chunk_id}\x1f{version}"))


def _strip(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in _VERSION_KEYS}


def _chunk_of(payload: Mapping[str, Any] | None, fallback: str) -> str:
    return str((payload or {}).get(CHUNK_KEY) or fallback)


def _schema(dim: int) -> StoreSchema:
    return StoreSchema(dim=dim, integer_keys=(V_FROM, V_TO))


# ------------------------------------------------------------------------------------------------------ catalogs
# --------------------------------------------------------------------------------------------------------- locks
class _FileLock:
    """Embedded mode's one-writer rule: an ``fcntl`` lock the kernel releases when the holder dies (even kill -9)."""

    def __init__(self, path: Path, *, what: str, wait_seconds: float) -> None:
        self.path = path
        self.what = what
        self.wait_seconds = wait_seconds
        self._fd: int | None = None

    def acquire(self, owner: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"
                    os.close(fd)
                    raise WriterBusy(
                        f"{self.what} is being written by another ingestion ({holder}); waited "
                        f"{self.wait_seconds:g} s (RAGOPS_QDRANT__WRITER_WAIT_SECONDS). Nothing was changed."
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, run {owner}, since {now()}".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def renew(self) -> None:
        """A file lock lasts as long as its holder: nothing to renew."""


class _Lease:
    """Server mode's one-writer rule: a lease point in ``<collection>__ragops``, taken by a conditional upsert
    (applied only when the lease is free, expired or ours), checked by reading it back, renewed as the writer
    works. A writer killed with -9 blocks others until its lease expires (``RAGOPS_QDRANT__LEASE_SECONDS``)."""

    _ID = str(uuid.uuid5(POINT_NAMESPACE, "writer-lease"))

    def __init__(self, client: QdrantClient, meta: str, *, what: str, wait_seconds: float, ttl: float) -> None:
        self.client = client
        self.meta = meta
        self.what = what
        self.wait_seconds = wait_seconds
        self.ttl = ttl
        self.owner = ""
        self._renewed = 0.0

    def _take(self) -> tuple[bool, Mapping[str, Any]]:
        from qdrant_client import models

        clock = time.time()
        point = models.PointStruct(
            id=self._ID, vector={}, payload={"owner": self.owner, "expires": clock + self.ttl, "since": now()}
        )
        free = models.Filter(
            should=[
                models.FieldCondition(key="expires", range=models.Range(lt=clock)),
                models.FieldCondition(key="owner", match=models.MatchValue(value=self.owner)),
            ]
        )
        self.client.upsert(self.meta, points=[point], update_filter=free, wait=True)
        records = self.client.retrieve(self.meta, ids=[self._ID], with_payload=True, with_vectors=False)
        payload = dict(records[0].payload or {}) if records else {}
        return payload.get("owner") == self.owner, payload

    def acquire(self, owner: str) -> None:
        self.owner = f"{owner}:{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + self.wait_seconds
        while True:
            ok, holder = self._take()
            if ok:
                self._renewed = time.monotonic()
                return
            if time.monotonic() >= deadline:
                raise WriterBusy(
                    f"{self.what} is being written by another ingestion (run {holder.get('owner')}, since "
                    f"{holder.get('since')}); waited {self.wait_seconds:g} s (RAGOPS_QDRANT__WRITER_WAIT_SECONDS). "
                    "Nothing was changed."
                )
            time.sleep(0.2)

    def renew(self) -> None:
        if time.monotonic() - self._renewed < self.ttl / 4:
            return
        ok, holder = self._take()
        if not ok:
            raise WriterBusy(f"{self.what}: this writer's lease expired and {holder.get('owner')} took over")
        self._renewed = time.monotonic()

    def release(self) -> None:
        from qdrant_client import models

        mine = models.Filter(must=[models.FieldCondition(key="owner", match=models.MatchValue(value=self.owner))])
        with contextlib.suppress(Exception):
            self.client.delete(self.meta, points_selector=models.FilterSelector(filter=mine), wait=True)


class _Shared:
    """Embedded mode's head lock: readers copy the shard under a shared lock, the writer writes under an exclusive
    one and flushes before releasing it, so a copy is never taken mid-write."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def hold(self, *, exclusive: bool) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


# -------------------------------------------------------------------------------------------------------- writer
class IndexWriter:
    """Builds the next version of a collection; nothing is visible to readers until :meth:`publish`.

    Holds the collection's writer lock from :meth:`VectorIndex.begin` until :meth:`publish` or :meth:`abort`.
    """

    def __init__(
        self,
        *,
        index: VectorIndex,
        store: PointStore,
        catalog: Catalog,
        base: Manifest | None,
        version: int,
        embedder: EmbedderIdentity,
        chunking: ChunkingParams,
        avgdl: float,
        run_id: str,
        guard: Callable[[], contextlib.AbstractContextManager[None]],
        release: Callable[[], None],
    ) -> None:
        self._index = index
        self._store = store
        self._catalog = catalog
        self.base = base
        self.version = version
        self.embedder = embedder
        self.chunking = chunking
        self.avgdl = avgdl
        self.run_id = run_id
        self._guard = guard
        self._release = release
        self._closed = False

    @property
    def collection(self) -> str:
        """The logical collection written."""
        return self._index.collection

    def _check_open(self) -> None:
        if self._closed:
            raise IndexError_(f"the writer of {self.collection!r} v{self.version} is closed")

    def upsert(
        self, chunks: Sequence[Chunk], dense: np.ndarray, sparse: Sequence[SparseVector], *, source_key: str
    ) -> int:
        """Write points (idempotent: ids are deterministic, so a retried batch overwrites itself)."""
        if len(chunks) != len(dense) or len(chunks) != len(sparse):
            raise ValueError("chunks, dense and sparse must have the same length")
        payloads = [point_payload(chunk, source_key=source_key) for chunk in chunks]
        return self.upsert_points([c.chunk_id for c in chunks], dense, sparse, payloads)

    def upsert_points(
        self,
        ids: Sequence[str],
        dense: np.ndarray,
        sparse: Sequence[SparseVector],
        payloads: Sequence[Mapping[str, Any]],
    ) -> int:
        """Write points with ready payloads; a chunk already alive is superseded (old readers keep seeing it)."""
        self._check_open()
        if not len(ids) == len(dense) == len(sparse) == len(payloads):
            raise ValueError("ids, dense, sparse and payloads must have the same length")
        if dense.size and dense.shape[1] != self.embedder.dim:
            raise IndexError_(f"vectors have dimension {dense.shape[1]}, the index expects {self.embedder.dim}")
        w = self.version
        for start in range(0, len(ids), 512):
            batch = list(ids[start : start + 512])
            points = [
                StoredPoint(physical_id(cid, w), vec, sp, {**_strip(payload), CHUNK_KEY: cid, V_FROM: w})
                for cid, vec, sp, payload in zip(
                    batch,
                    dense[start : start + 512],
                    sparse[start : start + 512],
                    payloads[start : start + 512],
                    strict=True,
                )
            ]
            older = PointFilter((Match(CHUNK_KEY, tuple(batch)),), ranges=(Range(V_FROM, lte=w - 1),), missing=(V_TO,))
            with self._guard():
                self._store.set_payload_where(older, {V_TO: w})
                self._store.upsert(points)
        return len(ids)

    def delete(self, chunk_ids: Sequence[str]) -> int:
        """Remove chunks from this version (earlier versions keep them); missing ids are ignored."""
        self._check_open()
        ids = list(chunk_ids)
        for start in range(0, len(ids), 1024):
            alive = PointFilter((Match(CHUNK_KEY, tuple(ids[start : start + 1024])),), missing=(V_TO,))
            with self._guard():
                self._store.set_payload_where(alive, {V_TO: self.version})
        return len(ids)

    def count(self) -> int:
        """Points in the version being built."""
        return self._store.count(PointFilter(window=self.version))

    def vectors(self, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored dense vectors of chunks of the base version (reused instead of embedding again)."""
        if self.base is None:
            return {}
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(chunk_ids), 1024):
            flt = PointFilter((Match(CHUNK_KEY, tuple(chunk_ids[start : start + 1024])),), self.base.version.version)
            for point in self._store.scroll(flt, dense=True, payload=[CHUNK_KEY]):
                if point.dense is not None:
                    found[_chunk_of(point.payload, point.id)] = point.dense
        return found

    def publish(self, docs: Mapping[str, DocEntry]) -> IndexVersion:
        """Record the version's identity and documents and make it current in one atomic step; then forget
        versions beyond ``keep_versions`` with the points and rows only they saw, and remove dead processes'
        private reader copies."""
        self._check_open()
        points = self.count()
        expected = sum(len(d.chunk_ids) for d in docs.values())
        if points != expected:
            raise IndexError_(f"staged index has {points} points but its manifest lists {expected}; not publishing")
        version = IndexVersion(
            collection=self.collection,
            version=self.version,
            embedder=self.embedder,
            chunking=self.chunking,
            avgdl=self.avgdl,
            points=points,
            documents=len(docs),
            created_at=now(),
            run_id=self.run_id,
        )
        with self._guard():
            self._store.flush()
            self._catalog.publish(Manifest(version=version, docs=dict(docs)), self.base)
        try:
            with self._guard():
                self._index._collect(self._store, self._catalog, keep=None, protect=())
        except Exception:  # garbage is collected by the next run; the version is published
            logger.warning("could not remove old index versions", exc_info=True)
        self._close()
        self._index._clear_dead_readers()
        logger.info("published index version", extra={"collection": version.collection, "version": version.version})
        return version

    def abort(self) -> None:
        """Throw the staged version away (a crash amounts to the same: the next writer removes its points)."""
        if self._closed:
            return
        try:
            with self._guard():
                _undo_unpublished(self._store, self._catalog.current() or 0)
        except Exception:
            logger.warning("could not undo the aborted run; the next writer will", exc_info=True)
        self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._store.close()
            finally:
                self._release()


def _undo_unpublished(store: PointStore, published: int) -> None:
    """Remove what runs after ``published`` wrote: their points, and their stamps on older points."""
    store.delete_where(PointFilter(ranges=(Range(V_FROM, gt=published),)))
    store.unset_payload_where(PointFilter(ranges=(Range(V_TO, gt=published),)), [V_TO])


# -------------------------------------------------------------------------------------------------------- reader
class IndexReader:
    """A read-only view of one published version; searches only ever see that version's points.

    Filters are :class:`pipelines.store.PointFilter`; hits and points carry chunk ids and the chunk's payload
    (ragops' own versioning keys removed).
    """

    def __init__(
        self,
        store: PointStore,
        collection: str,
        version: IndexVersion,
        window: int | None,
        cleanup: Callable[[], None],
        chunk_ids: Mapping[str, str] | None = None,
    ) -> None:
        """``chunk_ids`` (point id -> chunk id) saves reading payloads for id-only searches (a private copy)."""
        self.store = store
        self.collection = collection
        self.version = version
        self._window = window
        self._cleanup = cleanup
        self._chunk_ids = chunk_ids
        self._point_ids = {c: p for p, c in chunk_ids.items()} if chunk_ids is not None else None

    def _flt(self, flt: PointFilter | None) -> PointFilter | None:
        if self._window is None:
            return flt
        return (flt or PointFilter()).with_window(self._window)

    def _sparse_flt(self, flt: PointFilter | None) -> PointFilter:
        """A private copy holds only its version's points, but the engine still counts deleted points in its IDF
        statistics until it vacuums segments: ask for live points only (an empty corpus filter, about 0.2 ms)."""
        if self._window is not None:
            return (flt or PointFilter()).with_window(self._window)
        base = flt or PointFilter()
        return PointFilter(base.matches, None, base.ranges, base.missing, live_idf=True)

    def _keys(self, payload: bool | Sequence[str]) -> bool | list[str]:
        if payload is True:
            return True
        if payload is False:
            return False if self._chunk_ids is not None else [CHUNK_KEY]
        return [CHUNK_KEY, *payload]

    def _hits(self, hits: list[Hit], payload: bool | Sequence[str]) -> list[Hit]:
        known = self._chunk_ids
        return [
            Hit(
                known[h.id] if known is not None and h.payload is None else _chunk_of(h.payload, h.id),
                h.score,
                _strip(h.payload or {}) if payload else None,
            )
            for h in hits
        ]

    def search_dense(
        self, vector: np.ndarray, *, limit: int, flt: PointFilter | None = None, payload: bool | Sequence[str] = False
    ) -> list[Hit]:
        """Top ``limit`` chunks by cosine similarity, inside the filter."""
        hits = self.store.search_dense(vector, limit=limit, flt=self._flt(flt), payload=self._keys(payload))
        return self._hits(hits, payload)

    def search_sparse(
        self, vector: SparseVector, *, limit: int, flt: PointFilter | None = None, payload: bool | Sequence[str] = False
    ) -> list[Hit]:
        """Top ``limit`` chunks by BM25 (IDF of this version's points), inside the filter."""
        hits = self.store.search_sparse(vector, limit=limit, flt=self._sparse_flt(flt), payload=self._keys(payload))
        return self._hits(hits, payload)

    def search_hybrid(
        self,
        request: HybridRequest,
        *,
        limit: int,
        flt: PointFilter | None = None,
        payload: bool | Sequence[str] = False,
    ) -> list[Hit]:
        """Dense and BM25 lists fused by weighted RRF in the engine."""
        hits = self.store.search_hybrid(request, limit=limit, flt=self._sparse_flt(flt), payload=self._keys(payload))
        return self._hits(hits, payload)

    def retrieve(self, chunk_ids: Sequence[str], *, dense: bool = False, payload: bool = True) -> list[StoredPoint]:
        """Chunks by id (missing ids are left out), in no particular order."""
        if self._point_ids is not None:  # a private copy: by point id, no filter
            known = [self._point_ids[c] for c in chunk_ids if c in self._point_ids]
            return list(
                self._points(iter(self.store.retrieve(known, dense=dense, payload=self._keys(payload))), payload)
            )
        out: list[StoredPoint] = []
        for start in range(0, len(chunk_ids), 1024):
            flt = self._flt(PointFilter((Match(CHUNK_KEY, tuple(chunk_ids[start : start + 1024])),)))
            out.extend(self._points(self.store.scroll(flt, dense=dense, payload=self._keys(payload)), payload))
        return out

    def scroll(self, *, dense: bool = False, sparse: bool = False, payload: bool = True) -> Iterator[StoredPoint]:
        """Every chunk of the version."""
        points = self.store.scroll(self._flt(None), dense=dense, sparse=sparse, payload=self._keys(payload))
        return self._points(points, payload)

    def _points(self, points: Iterator[StoredPoint], payload: bool | Sequence[str]) -> Iterator[StoredPoint]:
        known = self._chunk_ids
        for p in points:
            chunk = known[p.id] if known is not None and p.payload is None else _chunk_of(p.payload, p.id)
            yield StoredPoint(chunk, p.dense, p.sparse, _strip(p.payload or {}) if payload else None)

    def count(self, flt: PointFilter | None = None) -> int:
        """Chunks of the version inside the filter."""
        return self.store.count(self._flt(flt))

    def sample_vectors(self, n: int, *, seed: int = 0) -> np.ndarray:
        """Up to ``n`` dense vectors of the version drawn uniformly without replacement, shape ``(m, dim)``."""
        vectors = [
            p.dense for p in self.store.scroll(self._flt(None), dense=True, payload=False) if p.dense is not None
        ]
        if not vectors:
            return np.empty((0, self.version.embedder.dim), dtype=np.float32)
        rows = np.random.default_rng(seed).permutation(len(vectors))[: max(0, n)]
        return np.stack([vectors[i] for i in sorted(rows)]).astype(np.float32)

    def close(self) -> None:
        """Release the store and any private copy."""
        self._cleanup()

    def __enter__(self) -> IndexReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------- the index
class VectorIndex:
    """Versions of one logical collection, in embedded or server mode (chosen by ``settings.qdrant.url``).

    Usage example::

        index = VectorIndex(settings)
        writer = index.begin(embedder=embedder.identity, chunking=chunker.params, avgdl=180.0, run_id="r1")
        writer.upsert(chunks, dense, sparse, source_key="/data/docs")
        writer.publish(docs)
        with index.reader() as reader:
            hits = reader.search_dense(vector, limit=10, flt=PointFilter.of({"tenant": ["acme"]}))
    """

    def __init__(
        self,
        settings: PipelineSettings,
        *,
        collection: str | None = None,
        client_factory: Callable[[], QdrantClient] | None = None,
    ) -> None:
        """Args:
        settings: Paths, Qdrant URL and key, keep-versions policy, writer wait.
        collection: Logical collection (default ``settings.qdrant.collection``).
        client_factory: Server mode with a custom client; it must return a NEW client per call, since readers
            and writers close the clients they get.
        """
        self.settings = settings
        self.collection = collection or settings.qdrant.collection
        self.server_mode = bool(settings.qdrant.url) or client_factory is not None
        self._client_factory = client_factory
        self.root = settings.qdrant_dir / self.collection
        self.data_collection = f"{self.collection}__data"
        self.meta_collection = f"{self.collection}__ragops"

    # ---------------------------------------------------------------------------------------------- plumbing
    def _server_client(self) -> QdrantClient:
        if self._client_factory is not None:
            return self._client_factory()
        from qdrant_client import QdrantClient

        api_key = self.settings.qdrant.api_key.get_secret_value() if self.settings.qdrant.api_key else None
        return QdrantClient(url=self.settings.qdrant.url, api_key=api_key, timeout=30)

    @contextlib.contextmanager
    def _catalog(self) -> Iterator[Catalog]:
        if not self.server_mode:
            self._check_layout()
            yield SqliteCatalog(self.root)
            return
        client = self._server_client()
        try:
            yield QdrantCatalog(client, self.data_collection, self.meta_collection)
        finally:
            client.close()

    def _check_layout(self) -> None:
        """Embedded folders of ragops before the Edge engine (qdrant-client local mode) cannot be read."""
        if self.root.is_dir() and not (self.root / HEAD_DIR).exists() and list(self.root.glob("v[0-9]*/qdrant")):
            raise IndexError_(
                f"collection {self.collection!r} at {self.root} was built by an older ragops (qdrant-client local "
                "mode); this release uses the embedded Qdrant engine. Delete that folder and run `ragops ingest` "
                "again (or ingest into a new --collection)."
            )

    @property
    def _head(self) -> _Shared:
        return _Shared(self.root / ".head.lock")

    # ------------------------------------------------------------------------------------------------ pointer
    def current_version(self) -> int | None:
        """The published version number, or None before the first publish."""
        with self._catalog() as catalog:
            return catalog.current()

    def versions(self) -> list[int]:
        """Published versions kept (the current one and those kept for rollback)."""
        with self._catalog() as catalog:
            return catalog.versions()

    def manifest(self, version: int | None = None) -> Manifest | None:
        """The manifest of ``version`` (default: current), or None when nothing is published."""
        with self._catalog() as catalog:
            return self._manifest(catalog, version)

    def _manifest(self, catalog: Catalog, version: int | None) -> Manifest | None:
        version = catalog.current() if version is None else version
        if version is None:
            return None
        manifest = catalog.manifest(version)
        if manifest is None:
            raise IndexError_(f"index version {version} of {self.collection!r} has no manifest (garbage-collected?)")
        return manifest

    def current(self) -> IndexVersion | None:
        """The published version's identity, or None."""
        manifest = self.manifest()
        return manifest.version if manifest else None

    # ------------------------------------------------------------------------------------------------ writing
    def begin(
        self,
        *,
        embedder: EmbedderIdentity,
        chunking: ChunkingParams,
        avgdl: float,
        run_id: str,
        known: Manifest | None = None,
    ) -> IndexWriter:
        """Take the collection's writer lock and start the next version from the current one.

        ``avgdl`` (BM25 mean document length) is used only for a collection's first version; later versions keep
        the one recorded then, so sparse weights stay comparable across versions. ``known`` is the current
        manifest when the caller has just read it (an ingestion's plan): it is used as the base while it is still
        the published version, instead of reading every document's row again.

        Raises:
            WriterBusy: Another writer holds the collection past ``RAGOPS_QDRANT__WRITER_WAIT_SECONDS``.
        """
        cfg = self.settings.qdrant
        if self.server_mode:
            client = self._server_client()
            catalog: Any = QdrantCatalog(client, self.data_collection, self.meta_collection)
            self._ensure_server_collections(client, embedder.dim)
            lock: Any = _Lease(
                client,
                self.meta_collection,
                what=f"collection {self.collection!r}",
                wait_seconds=cfg.writer_wait_seconds,
                ttl=cfg.lease_seconds,
            )
        else:
            self._check_layout()
            client = None
            catalog = SqliteCatalog(self.root)
            lock = _FileLock(
                self.root / ".writer.lock", what=f"collection {self.collection!r}", wait_seconds=cfg.writer_wait_seconds
            )
        early: Manifest | None = None
        try:
            fresh = known is not None and catalog.current() == known.version.version
            early = known if fresh else self._manifest(catalog, None)  # refuse a mismatch before touching anything
            if early is not None:
                self._check_fits(early, embedder, chunking)
            lock.acquire(run_id)
        except BaseException:
            if client is not None:
                client.close()
            raise
        store: PointStore | None = None
        try:
            same = early is not None and catalog.current() == early.version.version
            base = early if same else self._manifest(catalog, None)  # what was published while we waited
            if base is not None:
                self._check_fits(base, embedder, chunking)
                avgdl = base.version.avgdl
            published = base.version.version if base else 0
            if self.server_mode:
                assert client is not None
                store = ClientStore(client, self.data_collection, embedder.dim)
                guard = _lease_guard(lock)
            else:
                store = self._open_head(embedder.dim)
                guard = _head_guard(self._head, store)
            with guard():
                _undo_unpublished(store, published)
            catalog.prepare(published)
            version = max([*catalog.versions(), published]) + 1
        except BaseException:
            if store is not None:
                store.close()
            lock.release()
            if client is not None:
                client.close()
            raise

        def release() -> None:
            lock.release()
            if client is not None:
                client.close()

        return IndexWriter(
            index=self,
            store=store,
            catalog=catalog,
            base=base,
            version=version,
            embedder=embedder,
            chunking=chunking,
            avgdl=avgdl,
            run_id=run_id,
            guard=guard,
            release=release,
        )

    def _check_fits(self, base: Manifest, embedder: EmbedderIdentity, chunking: ChunkingParams) -> None:
        embedder.check_compatible(base.version.embedder, what=f"collection {self.collection!r}")
        if base.version.chunking != chunking:
            raise IndexError_(
                f"collection {self.collection!r} was chunked with {asdict(base.version.chunking)}, this run "
                f"uses {asdict(chunking)}; ingest into a new collection (--collection) to change chunking"
            )

    def _open_head(self, dim: int) -> EdgeStore:
        """Open the collection's shard, creating it first if needed (in a scratch folder renamed into place, so a
        run killed while creating it leaves no half-made shard)."""
        head = self.root / HEAD_DIR
        with self._head.hold(exclusive=True):
            for stale in self.root.glob(f"{HEAD_DIR}.creating-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if not head.exists():
                scratch = self.root / f"{HEAD_DIR}.creating-{os.getpid()}"
                EdgeStore.create(scratch, _schema(dim)).close()
                os.rename(scratch, head)
                _fsync_dir(self.root)
            return EdgeStore.load(head)

    @property
    def placement(self) -> Placement:
        """Shards and replication of the server collections this index creates (the settings; None: Qdrant's)."""
        cfg = self.settings.qdrant
        return Placement(
            shard_number=cfg.shard_number,
            replication_factor=cfg.replication_factor,
            write_consistency_factor=cfg.write_consistency_factor,
        )

    def _ensure_server_collections(self, client: QdrantClient, dim: int) -> None:
        from qdrant_client import models

        placement = self.placement
        if not client.collection_exists(self.meta_collection):
            client.create_collection(
                self.meta_collection,
                vectors_config={},
                shard_number=placement.shard_number,
                replication_factor=placement.replication_factor,
                write_consistency_factor=placement.write_consistency_factor,
            )
            keyword, integer = models.PayloadSchemaType.KEYWORD, models.PayloadSchemaType.INTEGER
            for key, schema in (("owner", keyword), ("kind", keyword), ("key", keyword)):
                client.create_payload_index(self.meta_collection, key, field_schema=schema)
            for key in ("version", "v_from", "v_to"):  # the catalog's rows and records (pipelines.catalog)
                client.create_payload_index(self.meta_collection, key, field_schema=integer)
        if not client.collection_exists(self.data_collection):
            ClientStore.create(client, self.data_collection, _schema(dim), placement=placement)
        aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
        target = aliases.get(self.collection)
        if target is None:
            op = models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=self.data_collection, alias_name=self.collection)
            )
            client.update_collection_aliases(change_aliases_operations=[op])
        elif target != self.data_collection:
            raise IndexError_(
                f"alias {self.collection!r} points at {target!r}, a collection of an older ragops (one collection "
                "per version); re-ingest into a new --collection, or delete that alias and its collections"
            )

    # ------------------------------------------------------------------------------------------------ reading
    def open_reader(self, version: int | None = None, *, expect: EmbedderIdentity | None = None) -> IndexReader:
        """Open a published version for reading (default: the current one).

        Args:
            version: A published version number; None means the current one.
            expect: When given, the version's embedder must match it (raises EmbedderMismatchError otherwise).
        """
        if self.server_mode:
            client = self._server_client()
            try:
                manifest = self._reader_manifest(
                    QdrantCatalog(client, self.data_collection, self.meta_collection), version, expect
                )
            except BaseException:
                client.close()
                raise
            store = ClientStore(client, self.collection, manifest.version.embedder.dim)  # through the alias
            return IndexReader(store, self.collection, manifest.version, manifest.version.version, client.close)
        with self._catalog() as catalog:
            manifest = self._reader_manifest(catalog, version, expect)
        head = self.root / HEAD_DIR
        private = self.root / "readers" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with self._head.hold(exclusive=False):
                if not head.is_dir():
                    raise IndexError_(f"collection {self.collection!r} is missing its data at {head}")
                copy_sparse_tree(head, private)
            copy = EdgeStore.load(private)
            v = manifest.version.version
            copy.delete_where(PointFilter(ranges=(Range(V_FROM, gt=v),)))  # later versions, unpublished runs
            copy.delete_where(PointFilter(ranges=(Range(V_TO, lte=v),)))  # gone before this version
            chunk_ids = {p.id: _chunk_of(p.payload, p.id) for p in copy.scroll(payload=[CHUNK_KEY])}
        except BaseException:
            shutil.rmtree(private, ignore_errors=True)
            raise

        def cleanup() -> None:
            copy.close()
            shutil.rmtree(private, ignore_errors=True)

        return IndexReader(copy, self.collection, manifest.version, None, cleanup, chunk_ids)

    def _reader_manifest(self, catalog: Catalog, version: int | None, expect: EmbedderIdentity | None) -> Manifest:
        version = catalog.current() if version is None else version
        if version is None:
            raise IndexError_(f"collection {self.collection!r} has no published version yet; run `ragops ingest`")
        if version not in catalog.versions():
            raise IndexError_(f"collection {self.collection!r} has no version {version} (kept: {catalog.versions()})")
        manifest = self._manifest(catalog, version)
        assert manifest is not None
        if expect is not None:
            expect.check_compatible(manifest.version.embedder, what=f"collection {self.collection!r}")
        return manifest

    @contextlib.contextmanager
    def reader(self, version: int | None = None, *, expect: EmbedderIdentity | None = None) -> Iterator[IndexReader]:
        """Context-manager form of :meth:`open_reader`."""
        reader = self.open_reader(version, expect=expect)
        try:
            yield reader
        finally:
            reader.close()

    # ---------------------------------------------------------------------------------------------- housekeeping
    def gc(self, *, keep: int | None = None, protect: Sequence[int] = ()) -> list[int]:
        """Forget versions beyond the newest ``keep`` (never the current one or ``protect``ed ones) and delete the
        points no kept version sees. Takes the writer lock (waits for a running ingestion)."""
        manifest = self.manifest()
        if manifest is None:
            self._clear_dead_readers()
            return []
        writer = self.begin(
            embedder=manifest.version.embedder, chunking=manifest.version.chunking, avgdl=0.0, run_id="gc"
        )
        try:
            with writer._guard():
                removed = self._collect(writer._store, writer._catalog, keep=keep, protect=protect)
        finally:
            writer._close()
        self._clear_dead_readers()
        return removed

    def _collect(self, store: PointStore, catalog: Catalog, *, keep: int | None, protect: Sequence[int]) -> list[int]:
        keep = keep or self.settings.qdrant.keep_versions
        current = catalog.current()
        versions = catalog.versions()
        keep_set = set(versions[-keep:]) | set(protect) | ({current} if current else set())
        removed = [v for v in versions if v not in keep_set]
        if removed:
            catalog.forget(removed)
        kept = sorted(v for v in versions if v in keep_set)
        if kept:
            store.delete_where(PointFilter(ranges=(Range(V_TO, lte=kept[0]),)))
            store.compact()  # embedded: vacuum once deleted points pass 20% of a segment (no-op for a server)
        return removed

    def erase(self, target: ErasureTarget) -> IndexErasure:
        """Remove every point and manifest entry of the documents ``target`` names, from the published version and
        from every version kept for rollback, then publish the current documents minus those as a new version.

        Points are deleted physically, not stamped out of a version window. In embedded mode the shard is then
        rewritten from its remaining points (Qdrant's own files keep deleted payloads in segments and the WAL until
        they are vacuumed and rotated, and an erasure must leave no copy on disk); a server vacuums on its own
        optimizer schedule. Takes the writer lock, like an ingestion.
        """
        nothing = IndexErasure(self.collection, (), (), 0, (), None, 0)
        manifest = self.manifest()
        if manifest is None:
            return nothing
        writer = self.begin(
            embedder=manifest.version.embedder, chunking=manifest.version.chunking, avgdl=0.0, run_id="erase"
        )
        catalog, store = writer._catalog, writer._store
        try:
            kept = {v: self._manifest(catalog, v) for v in catalog.versions()}
            current = catalog.current()
            base = kept.get(current) if current is not None else None
            ids, sources = _erased_docs(kept.values(), store, target)
            if not ids or base is None:
                return nothing
            listed = sorted(ids)
            with writer._guard():
                before = store.count()
                for start in range(0, len(listed), 1024):
                    store.delete_where(PointFilter((Match(DOC_KEY, tuple(listed[start : start + 1024])),)))
                removed = before - store.count()
                records = [
                    _without(old, ids).version for old in kept.values() if old is not None and ids & set(old.docs)
                ]
                catalog.erase_docs(sorted(ids), records)
                rewritten = [r.version for r in records]
            embedded = isinstance(store, EdgeStore)
            with self._head.hold(exclusive=True) if embedded else contextlib.nullcontext():
                if isinstance(store, EdgeStore):
                    store = self._rewrite_head(store, manifest.version.embedder.dim)
                docs = {k: d for k, d in base.docs.items() if k not in ids}
                version = replace_version(
                    base.version,
                    version=writer.version,
                    points=sum(len(d.chunk_ids) for d in docs.values()),
                    documents=len(docs),
                    created_at=now(),
                    run_id="erase",
                )
                catalog.publish(Manifest(version=version, docs=docs), _without(base, ids))
                self._collect(store, catalog, keep=None, protect=())
                store.flush()
        finally:
            store.close()
            writer._close()
        self._clear_dead_readers()
        readers = self.root / "readers"
        live = sum(1 for _ in readers.iterdir()) if not self.server_mode and readers.is_dir() else 0
        logger.info(
            "erased documents from the index",
            extra={"collection": self.collection, "documents": len(ids), "points": removed, "version": version.version},
        )
        return IndexErasure(
            collection=self.collection,
            doc_ids=tuple(listed),
            sources=tuple(sorted(sources)),
            points_removed=removed,
            versions_rewritten=tuple(rewritten),
            published=version.version,
            live_readers=live,
        )

    def _rewrite_head(self, store: EdgeStore, dim: int) -> EdgeStore:
        """Copy the head's remaining points into a fresh shard and put it in the head's place (caller holds the
        head lock exclusively and the writer lock): nothing of deleted points survives in segments or the WAL."""
        head = self.root / HEAD_DIR
        scratch = self.root / f"{HEAD_DIR}.erasing-{os.getpid()}"
        old = self.root / f"{HEAD_DIR}.erased-{os.getpid()}"
        for leftover in (scratch, old):
            shutil.rmtree(leftover, ignore_errors=True)
        fresh = EdgeStore.create(scratch, _schema(dim), wal=False)
        try:
            batch: list[StoredPoint] = []
            for point in store.scroll(dense=True, sparse=True, payload=True):
                batch.append(point)
                if len(batch) == 512:
                    fresh.upsert(batch)
                    batch = []
            if batch:
                fresh.upsert(batch)
            fresh.flush()
        finally:
            fresh.close()
        store.close()
        os.rename(head, old)
        os.rename(scratch, head)
        _fsync_dir(self.root)
        shutil.rmtree(old, ignore_errors=True)
        return EdgeStore.load(head)

    def drop(self) -> None:
        """Delete the whole collection: every version, the pointer (server mode: its collections and alias).

        For garbage collection of shadow indexes nobody serves any more; never drop what a stack in service reads.
        """
        if self.server_mode:
            from qdrant_client import models

            client = self._server_client()
            try:
                aliases = {a.alias_name for a in client.get_aliases().aliases}
                if self.collection in aliases:
                    op = models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.collection))
                    client.update_collection_aliases(change_aliases_operations=[op])
                for name in (self.data_collection, self.meta_collection):
                    if client.collection_exists(name):
                        client.delete_collection(name)
            finally:
                client.close()
        shutil.rmtree(self.root, ignore_errors=True)
        logger.info("dropped collection", extra={"collection": self.collection})

    def _clear_dead_readers(self) -> None:
        readers = self.root / "readers"
        if not readers.is_dir():
            return
        for folder in readers.iterdir():
            pid = folder.name.split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)


def _erased_docs(
    manifests: Iterable[Manifest | None], store: PointStore, target: ErasureTarget
) -> tuple[set[str], set[str]]:
    """Ids and source files of the documents ``target`` names, over every kept version (a tenant's documents are
    also found by the points' ``tenant`` payload, which a sidecar may set on an untenanted id)."""
    ids: set[str] = set()
    sources: set[str] = set()
    for manifest in manifests:
        for entry in manifest.docs.values() if manifest else ():
            if target.covers(entry.doc_id, entry.source, None):
                ids.add(entry.doc_id)
                sources.add(entry.source)
    if target.kind == "tenant":
        flt = PointFilter.of({TENANT_KEY: [target.value]})
        for point in store.scroll(flt, payload=[DOC_KEY, "source"]):
            payload = point.payload or {}
            if payload.get(DOC_KEY):
                ids.add(str(payload[DOC_KEY]))
                sources.add(str(payload.get("source") or ""))
    sources.discard("")
    return ids, sources


def _without(manifest: Manifest, ids: set[str]) -> Manifest:
    docs = {k: d for k, d in manifest.docs.items() if k not in ids}
    points = sum(len(d.chunk_ids) for d in docs.values())
    version = replace_version(manifest.version, points=points, documents=len(docs))
    return Manifest(version=version, docs=docs)


def copy_sparse_tree(source: Path, target: Path) -> None:
    """Copy a folder keeping holes: the engine preallocates its files (a 100-point shard is 150 MB apparent, a few
    MB real), so a plain copy would write every preallocated zero. Data ranges are found with SEEK_DATA/SEEK_HOLE
    and copied in the kernel (``copy_file_range``)."""
    target.mkdir(parents=True)
    for entry in os.scandir(source):
        dst = target / entry.name
        if entry.is_dir(follow_symlinks=False):
            copy_sparse_tree(Path(entry.path), dst)
            continue
        with open(entry.path, "rb") as src_file, open(dst, "wb") as dst_file:
            size = os.fstat(src_file.fileno()).st_size
            dst_file.truncate(size)
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(src_file.fileno(), offset, os.SEEK_DATA)
                except OSError:  # ENXIO: only a hole remains
                    break
                end = os.lseek(src_file.fileno(), start, os.SEEK_HOLE)
                position = start
                while position < end:
                    copied = os.copy_file_range(
                        src_file.fileno(), dst_file.fileno(), end - position, position, position
                    )
                    if copied == 0:
                        break
                    position += copied
                offset = end


def _head_guard(head: _Shared, store: PointStore) -> Callable[[], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        with head.hold(exclusive=True):
            yield
            store.flush()

    return guard


def _lease_guard(lease: _Lease) -> Callable[[], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        lease.renew()
        yield

    return guard


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
