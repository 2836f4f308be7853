"""The index catalog: which version is published, each kept version's identity, and the documents of every version.

Why rows and not one file per version: a version's manifest lists every document (SciFact: 5,183 documents, 2.4 MB
of JSON), so writing it whole made publishing a run that changed 1% of the documents cost a fixed rewrite of the
whole list. The catalog keeps documents the way the store keeps points: one row per document entry, valid from the
version it appeared in (``v_from``) until the version that changed or removed it (``v_to``). Version ``V``'s
documents are the rows with ``v_from <= V < v_to``. A publish ends the rows of the documents it changed, adds rows
for their new entries, records the version and switches the pointer; what did not change is not written.

- **Embedded** (:class:`SqliteCatalog`): ``catalog.sqlite`` beside the shard. Rows, version record and pointer
  change in one SQLite transaction, so a reader sees the old version or the new one and a killed publish leaves
  nothing behind. A home written by an earlier release (``CURRENT`` and ``versions/v000007.json``) is imported the
  first time it is read.
- **Server** (:class:`QdrantCatalog`): rows and version records are points (no vectors) of ``<collection>__ragops``
  and the published version is the data collection's metadata, so every process with the URL sees one state. The
  metadata update is the atomic switch; rows a killed publish left above the published version are removed by the
  next writer (:meth:`QdrantCatalog.prepare`), which also converts whole-manifest points of an earlier release.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipelines.chunk import ChunkingParams
from pipelines.embed import EmbedderIdentity
from pipelines.errors import IndexError_

if TYPE_CHECKING:
    from qdrant_client import QdrantClient, models

__all__ = [
    "CATALOG_FILE",
    "POINT_NAMESPACE",
    "Catalog",
    "DocEntry",
    "IndexVersion",
    "Manifest",
    "ManifestDelta",
    "QdrantCatalog",
    "SqliteCatalog",
    "manifest_delta",
]

CATALOG_FILE = "catalog.sqlite"
LEGACY_POINTER_FILE = "CURRENT"
LEGACY_VERSIONS_DIR = "versions"
POINT_NAMESPACE = uuid.UUID("5b0c3f64-4c1e-4e0f-9a55-1d7f7a4f0d11")
_SQL_BATCH = 500
"""Parameters per ``IN (...)`` list (SQLite's limit is 32,766 on current builds, 999 on old ones)."""


def now() -> str:
    """UTC timestamp as the catalog records it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class DocEntry:
    """What the index holds of one document."""

    doc_id: str
    content_hash: str
    source_key: str
    source: str
    title: str
    chunk_ids: tuple[str, ...]


@dataclass(frozen=True)
class IndexVersion:
    """An immutable, published version of a collection."""

    collection: str
    version: int
    embedder: EmbedderIdentity
    chunking: ChunkingParams
    avgdl: float
    points: int
    documents: int
    created_at: str
    run_id: str

    @property
    def name(self) -> str:
        """Folder or collection name of this version, e.g. ``v000007``."""
        return f"v{self.version:06d}"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (collection metadata, MLflow params, CLI ``--json``)."""
        data = asdict(self)
        data["embedder"] = self.embedder.to_json()
        data["chunking"] = asdict(self.chunking)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IndexVersion:
        """Inverse of :meth:`to_json`."""
        return cls(
            collection=str(data["collection"]),
            version=int(data["version"]),
            embedder=EmbedderIdentity.from_json(dict(data["embedder"])),
            chunking=ChunkingParams(**dict(data["chunking"])),
            avgdl=float(data["avgdl"]),
            points=int(data["points"]),
            documents=int(data["documents"]),
            created_at=str(data["created_at"]),
            run_id=str(data["run_id"]),
        )


def _entry_json(entry: DocEntry) -> dict[str, Any]:
    return {
        "doc_id": entry.doc_id,
        "content_hash": entry.content_hash,
        "source_key": entry.source_key,
        "source": entry.source,
        "title": entry.title,
        "chunk_ids": list(entry.chunk_ids),
    }


def _entry_of(data: Mapping[str, Any]) -> DocEntry:
    return DocEntry(
        doc_id=str(data["doc_id"]),
        content_hash=str(data["content_hash"]),
        source_key=str(data["source_key"]),
        source=str(data["source"]),
        title=str(data["title"]),
        chunk_ids=tuple(data["chunk_ids"]),
    )


@dataclass(frozen=True)
class Manifest:
    """A version plus its documents (keyed by document id)."""

    version: IndexVersion
    docs: Mapping[str, DocEntry] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON form (field by field: ``asdict`` deep-copies, 0.25 s for 5k documents)."""
        return {"version": self.version.to_json(), "docs": {k: _entry_json(v) for k, v in self.docs.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Inverse of :meth:`to_json`."""
        docs = {k: _entry_of(v) for k, v in dict(data.get("docs", {})).items()}
        return cls(version=IndexVersion.from_json(data["version"]), docs=docs)


@dataclass(frozen=True)
class ManifestDelta:
    """What a publish writes to the catalog: the documents whose entry ends, and the entries that start."""

    ended: tuple[str, ...]
    added: tuple[tuple[str, DocEntry], ...]


def manifest_delta(base: Mapping[str, DocEntry], docs: Mapping[str, DocEntry]) -> ManifestDelta:
    """Entries of ``docs`` that ``base`` lacks or holds differently, and documents of ``base`` that end."""
    added = []
    ended = [k for k in base if k not in docs]
    for key, entry in docs.items():
        known = base.get(key)
        if known is None:
            added.append((key, entry))
        elif known != entry:
            added.append((key, entry))
            ended.append(key)
    return ManifestDelta(ended=tuple(ended), added=tuple(added))


class Catalog(Protocol):
    """Where the published version and the manifests live (SQLite beside the shard, or Qdrant itself)."""

    def current(self) -> int | None:
        """The published version, or None before the first publish."""
        ...

    def versions(self) -> list[int]:
        """Versions kept (published ones, oldest first)."""
        ...

    def manifest(self, version: int) -> Manifest | None:
        """A kept version's identity and documents, or None when it is not kept."""
        ...

    def publish(self, manifest: Manifest, base: Manifest | None) -> None:
        """Record ``manifest`` (its rows written as a delta from ``base``, the version the writer started from)
        and make it the published version."""
        ...

    def forget(self, versions: Sequence[int]) -> None:
        """Drop versions (garbage collection) and the rows no kept version sees."""
        ...

    def erase_docs(self, keys: Sequence[str], records: Sequence[IndexVersion]) -> None:
        """Remove documents from every version (erasure) and rewrite the given versions' records."""
        ...

    def prepare(self, published: int) -> None:
        """Called by a writer holding the lock: remove what an unfinished publish left above ``published``."""
        ...


# -------------------------------------------------------------------------------------------------------- SQLite
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pointer (
    id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, published_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (version INTEGER PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
    key TEXT NOT NULL, v_from INTEGER NOT NULL, v_to INTEGER,
    doc_id TEXT NOT NULL, content_hash TEXT NOT NULL, source_key TEXT NOT NULL, source TEXT NOT NULL,
    title TEXT NOT NULL, chunk_ids TEXT NOT NULL,
    PRIMARY KEY (key, v_from));
CREATE INDEX IF NOT EXISTS docs_by_end ON docs (v_to);
PRAGMA user_version = 1;
"""
_ROW_COLUMNS = "key, doc_id, content_hash, source_key, source, title, chunk_ids"


class SqliteCatalog:
    """Embedded mode: ``catalog.sqlite`` beside the shard (rollback journal: readers poll it, one writer)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / CATALOG_FILE

    # ------------------------------------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            yield conn
        except sqlite3.DatabaseError as exc:
            raise IndexError_(f"index catalog {self.path} is unreadable: {exc}") from exc
        finally:
            conn.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection | None]:
        """A connection to read from, or None while nothing was ever published (no file is created by reading,
        except when an earlier release's files are imported)."""
        if not self.path.exists():
            if not (self.root / LEGACY_POINTER_FILE).exists():
                yield None
                return
            self._import_legacy()
        with self._connection() as conn:
            conn.execute("BEGIN")  # one snapshot for every statement of the read (a version record and its rows)
            try:
                fresh = conn.execute("PRAGMA user_version").fetchone()[0] == 0  # created, schema not committed yet
                yield None if fresh else conn
            finally:
                if conn.in_transaction:  # SQLite may have rolled back itself after an error
                    conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: a second writer waits instead of failing at commit)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._connection() as conn:
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:  # a new file (IF NOT EXISTS: races are fine)
                conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ------------------------------------------------------------------------------------------------- reading
    def current(self) -> int | None:
        with self._read() as conn:
            row = conn.execute("SELECT version FROM pointer WHERE id = 1").fetchone() if conn else None
            return int(row[0]) if row else None

    def versions(self) -> list[int]:
        with self._read() as conn:
            return [int(r[0]) for r in conn.execute("SELECT version FROM versions ORDER BY version")] if conn else []

    def manifest(self, version: int) -> Manifest | None:
        with self._read() as conn:
            if conn is None:
                return None
            record = conn.execute("SELECT record FROM versions WHERE version = ?", (version,)).fetchone()
            if record is None:
                return None
            rows = conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM docs WHERE v_from <= ?1 AND (v_to IS NULL OR v_to > ?1)", (version,)
            ).fetchall()
        chunk_lists = json.loads(f"[{','.join(r[6] for r in rows)}]")  # one parse for all rows: 5k parses cost 20 ms
        docs = {
            key: DocEntry(doc_id, content_hash, source_key, source, title, tuple(chunk_ids))
            for (key, doc_id, content_hash, source_key, source, title, _), chunk_ids in zip(
                rows, chunk_lists, strict=True
            )
        }
        return Manifest(version=IndexVersion.from_json(json.loads(record[0])), docs=docs)

    # ------------------------------------------------------------------------------------------------- writing
    def publish(self, manifest: Manifest, base: Manifest | None) -> None:
        with self._write() as conn:
            if base is not None and not self._has(conn, base.version.version):  # a base the catalog lost
                conn.execute("UPDATE docs SET v_to = ? WHERE v_to IS NULL", (manifest.version.version,))
                base = None
            self._publish_in(conn, manifest, base)

    @staticmethod
    def _has(conn: sqlite3.Connection, version: int) -> bool:
        return conn.execute("SELECT 1 FROM versions WHERE version = ?", (version,)).fetchone() is not None

    def forget(self, versions: Sequence[int]) -> None:
        if not versions:
            return
        with self._write() as conn:
            conn.executemany("DELETE FROM versions WHERE version = ?", [(v,) for v in versions])
            conn.execute(
                "DELETE FROM docs WHERE v_to IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM versions k WHERE k.version >= docs.v_from AND k.version < docs.v_to)"
            )

    def erase_docs(self, keys: Sequence[str], records: Sequence[IndexVersion]) -> None:
        listed = list(keys)
        with self._write() as conn:
            for start in range(0, len(listed), _SQL_BATCH):
                batch = listed[start : start + _SQL_BATCH]
                conn.execute(f"DELETE FROM docs WHERE key IN ({','.join('?' * len(batch))})", batch)
            conn.executemany(
                "UPDATE versions SET record = ? WHERE version = ?",
                [(json.dumps(r.to_json()), r.version) for r in records],
            )

    def prepare(self, published: int) -> None:
        """Nothing to remove: a publish is one transaction, so a killed one left nothing."""

    # -------------------------------------------------------------------------------------------------- legacy
    def _import_legacy(self) -> None:
        """Import an earlier release's ``CURRENT`` and ``versions/*.json`` (versions up to the pointer; a manifest
        above it is a publish killed before its switch), then remove those files.

        Imported when first read, by whichever process reads first; the import is one transaction, and a process
        that finds the catalog already filled only removes the files."""
        pointer = self.root / LEGACY_POINTER_FILE
        try:
            current = int(json.loads(pointer.read_text())["version"])
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexError_(f"pointer {pointer} is unreadable: {exc}") from exc
        folder = self.root / LEGACY_VERSIONS_DIR
        files = sorted(
            (int(p.stem[1:]), p)
            for p in folder.glob("v[0-9]*.json")
            if p.stem[1:].isdigit() and int(p.stem[1:]) <= current
        )
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM pointer").fetchone() is None:  # another process may have imported
                previous: Manifest | None = None
                for _, path in files:
                    manifest = Manifest.from_json(json.loads(path.read_text()))
                    self._publish_in(conn, manifest, previous)
                    previous = manifest
        pointer.unlink(missing_ok=True)
        for path in folder.glob("v[0-9]*.json"):  # with the manifests of publishes killed before their switch
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()

    @staticmethod
    def _publish_in(conn: sqlite3.Connection, manifest: Manifest, base: Manifest | None) -> None:
        """Write ``manifest`` as a delta from ``base`` (whose rows are the live ones) and switch the pointer."""
        version = manifest.version.version
        delta = manifest_delta(base.docs if base else {}, manifest.docs)
        conn.executemany(
            "UPDATE docs SET v_to = ? WHERE v_to IS NULL AND key = ?", [(version, key) for key in delta.ended]
        )
        conn.executemany(
            f"INSERT INTO docs (v_from, {_ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (version, key, e.doc_id, e.content_hash, e.source_key, e.source, e.title, json.dumps(e.chunk_ids))
                for key, e in delta.added
            ],
        )
        conn.execute(
            "INSERT OR REPLACE INTO versions (version, record) VALUES (?, ?)",
            (version, json.dumps(manifest.version.to_json())),
        )
        conn.execute("INSERT OR REPLACE INTO pointer (id, version, published_at) VALUES (1, ?, ?)", (version, now()))


# -------------------------------------------------------------------------------------------------------- Qdrant
class QdrantCatalog:
    """Server mode: the data collection's metadata holds the published version and the kept versions; version
    records and document rows are points (no vectors) of the ``__ragops`` collection, next to the writer lease."""

    def __init__(self, client: QdrantClient, data: str, meta: str) -> None:
        self.client = client
        self.data = data
        self.meta = meta

    # ------------------------------------------------------------------------------------------------ plumbing
    @staticmethod
    def _legacy_id(version: int) -> str:
        """An earlier release's whole-manifest point."""
        return str(uuid.uuid5(POINT_NAMESPACE, f"manifest\x1f{version}"))

    @staticmethod
    def _record_id(version: int) -> str:
        return str(uuid.uuid5(POINT_NAMESPACE, f"version\x1f{version}"))

    @staticmethod
    def _row_id(key: str, v_from: int) -> str:
        return str(uuid.uuid5(POINT_NAMESPACE, f"doc\x1f{key}\x1f{v_from}"))

    def _state(self) -> dict[str, Any]:
        if not self.client.collection_exists(self.data):
            return {}
        metadata = self.client.get_collection(self.data).config.metadata or {}
        state = metadata.get("ragops")
        return dict(state) if isinstance(state, Mapping) else {}

    def _rows(self, flt: models.Filter) -> Iterator[models.Record]:
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                self.meta, scroll_filter=flt, limit=1024, offset=offset, with_payload=True, with_vectors=False
            )
            yield from records
            if offset is None:
                return

    @staticmethod
    def _kind(kind: str, *more: Any) -> models.Filter:
        from qdrant_client import models

        return models.Filter(must=[models.FieldCondition(key="kind", match=models.MatchValue(value=kind)), *more])

    def _window(self, version: int) -> models.Filter:
        from qdrant_client import models

        seen = models.Filter(should=[self._alive(), models.FieldCondition(key="v_to", range=models.Range(gt=version))])
        return self._kind("doc", models.FieldCondition(key="v_from", range=models.Range(lte=version)), seen)

    def _records(self, versions: Sequence[int]) -> dict[int, Mapping[str, Any]]:
        """Stored version records (and an earlier release's whole manifests) by version."""
        ids = [i for v in versions for i in (self._record_id(v), self._legacy_id(v))]
        found: dict[int, Mapping[str, Any]] = {}
        for record in self.client.retrieve(self.meta, ids=ids, with_payload=True, with_vectors=False):
            payload = record.payload or {}
            version = int(payload["version"])
            if payload.get("kind") == "version" or version not in found:
                found[version] = payload
        return found

    # ------------------------------------------------------------------------------------------------- reading
    def current(self) -> int | None:
        value = self._state().get("current")
        return int(value) if value is not None else None

    def versions(self) -> list[int]:
        return sorted(int(v) for v in self._state().get("versions", []))

    def manifest(self, version: int) -> Manifest | None:
        if not self.client.collection_exists(self.meta):
            return None
        payload = self._records([version]).get(version)
        if payload is None:
            return None
        if payload.get("kind") == "manifest":  # an earlier release's point, until a writer converts it
            return Manifest.from_json(json.loads(str(payload["manifest"])))
        docs = {str(r.payload["key"]): _entry_of(r.payload) for r in self._rows(self._window(version)) if r.payload}
        return Manifest(version=IndexVersion.from_json(json.loads(str(payload["record"]))), docs=docs)

    # ------------------------------------------------------------------------------------------------- writing
    def publish(self, manifest: Manifest, base: Manifest | None) -> None:
        from qdrant_client import models

        version = manifest.version.version
        if (
            base is not None
            and self._records([base.version.version]).get(base.version.version, {}).get("kind") != "version"
        ):
            live = self._kind("doc", self._alive())
            self.client.set_payload(self.meta, payload={"v_to": version}, points=models.FilterSelector(filter=live))
            base = None  # a base the catalog lost: every live row ends here
        self._write_delta(version, base.docs if base is not None else {}, manifest.docs)
        self._put_records([manifest.version])
        state = {"current": version, "versions": sorted({*self.versions(), version}), "published_at": now()}
        self.client.update_collection(self.data, metadata={"ragops": state})  # the atomic switch

    @staticmethod
    def _alive() -> models.IsEmptyCondition:
        from qdrant_client import models

        return models.IsEmptyCondition(is_empty=models.PayloadField(key="v_to"))

    def _write_delta(self, version: int, base: Mapping[str, DocEntry], docs: Mapping[str, DocEntry]) -> None:
        """Write ``docs`` as rows of ``version``, a delta from ``base`` (whose rows are the live ones): end the live
        rows of documents that changed or left, add rows for the entries that start."""
        from qdrant_client import models

        delta = manifest_delta(base, docs)
        ended = list(delta.ended)
        for start in range(0, len(ended), 1024):
            keys = models.FieldCondition(key="key", match=models.MatchAny(any=ended[start : start + 1024]))
            selector = models.FilterSelector(filter=self._kind("doc", keys, self._alive()))
            self.client.set_payload(self.meta, payload={"v_to": version}, points=selector)
        for start in range(0, len(delta.added), 512):
            points = [
                models.PointStruct(
                    id=self._row_id(key, version),
                    vector={},
                    payload={"kind": "doc", "key": key, "v_from": version, **_entry_json(entry)},
                )
                for key, entry in delta.added[start : start + 512]
            ]
            self.client.upsert(self.meta, points=points)

    def forget(self, versions: Sequence[int]) -> None:
        from qdrant_client import models

        if not versions:
            return
        state = self._state()
        kept = sorted(set(self.versions()) - set(versions))
        state["versions"] = kept
        self.client.update_collection(self.data, metadata={"ragops": state})
        ids: list[models.ExtendedPointId] = [i for v in versions for i in (self._record_id(v), self._legacy_id(v))]
        self.client.delete(self.meta, points_selector=models.PointIdsList(points=ids), wait=True)
        ended = self._kind("doc", models.FieldCondition(key="v_to", range=models.Range(gte=0)))
        dead = [
            r.id
            for r in self._rows(ended)
            if r.payload and not any(int(r.payload["v_from"]) <= k < int(r.payload["v_to"]) for k in kept)
        ]
        for start in range(0, len(dead), 1024):
            selector = models.PointIdsList(points=dead[start : start + 1024])
            self.client.delete(self.meta, points_selector=selector, wait=True)

    def erase_docs(self, keys: Sequence[str], records: Sequence[IndexVersion]) -> None:
        from qdrant_client import models

        listed = list(keys)
        for start in range(0, len(listed), 1024):
            flt = self._kind(
                "doc", models.FieldCondition(key="key", match=models.MatchAny(any=listed[start : start + 1024]))
            )
            self.client.delete(self.meta, points_selector=models.FilterSelector(filter=flt), wait=True)
        self._put_records(records)

    def _put_records(self, records: Sequence[IndexVersion]) -> None:
        from qdrant_client import models

        points = [
            models.PointStruct(
                id=self._record_id(r.version),
                vector={},
                payload={"kind": "version", "version": r.version, "record": json.dumps(r.to_json())},
            )
            for r in records
        ]
        if points:
            self.client.upsert(self.meta, points=points)

    def prepare(self, published: int) -> None:
        """Remove rows and records a publish killed before its switch left above ``published`` (and its ``v_to``
        stamps), then convert an earlier release's whole-manifest points into rows."""
        from qdrant_client import models

        above = models.Range(gt=published)
        selector = models.FilterSelector(filter=self._kind("doc", models.FieldCondition(key="v_from", range=above)))
        self.client.delete(self.meta, points_selector=selector, wait=True)
        selector = models.FilterSelector(
            filter=self._kind("version", models.FieldCondition(key="version", range=above))
        )
        self.client.delete(self.meta, points_selector=selector, wait=True)
        stamped = models.FilterSelector(filter=self._kind("doc", models.FieldCondition(key="v_to", range=above)))
        self.client.delete_payload(self.meta, keys=["v_to"], points=stamped)
        self._convert_legacy()

    def _convert_legacy(self) -> None:
        versions = self.versions()
        records = self._records(versions)
        legacy = [v for v in versions if records.get(v, {}).get("kind") == "manifest"]
        if not legacy or len(legacy) != len(records):  # nothing to convert, or rows already written
            return
        from qdrant_client import models

        manifests = [Manifest.from_json(json.loads(str(records[v]["manifest"]))) for v in legacy]
        previous: Mapping[str, DocEntry] = {}
        for manifest in manifests:
            self._write_delta(manifest.version.version, previous, manifest.docs)
            previous = manifest.docs
        self._put_records([m.version for m in manifests])
        selector = models.PointIdsList(points=[self._legacy_id(v) for v in legacy])
        self.client.delete(self.meta, points_selector=selector, wait=True)
