"""One contract for both index adapters: the Qdrant engine in process (Edge) and qdrant-client (server mode,
against qdrant-client's in-memory mode standing in for a server: no Qdrant server binary installs here).

Vectors are synthetic (no embedder), so the index logic is what is tested: upsert, delete, filters enforced inside
the search, dense, sparse with IDF, RRF fusion, versions published atomically, one writer at a time, readers keeping
their snapshot, and crash recovery.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flows.settings import Settings
from pipelines import catalog as catalog_module
from pipelines.catalog import CATALOG_FILE, POINT_NAMESPACE
from pipelines.chunk import ChunkingParams
from pipelines.embed import EmbedderIdentity
from pipelines.erasure import ErasureTarget
from pipelines.errors import EmbedderMismatchError, IndexError_, WriterBusy
from pipelines.index import DocEntry, IndexReader, VectorIndex
from pipelines.sparse import SparseVector
from pipelines.store import (
    ClientStore,
    EdgeStore,
    HybridRequest,
    Match,
    PointFilter,
    PointStore,
    StoredPoint,
    StoreSchema,
)

DIM = 8
IDENTITY = EmbedderIdentity(name="test", weights_sha256="a" * 64, dim=DIM, max_tokens=128)
CHUNKING = ChunkingParams(splitter="sentence", chunk_size=128, chunk_overlap=0, tokenizer="t")
MODES = ["edge", "server"]


def _cid(n: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"chunk-{n}"))


def _vec(n: int) -> np.ndarray:
    v = np.random.default_rng(n).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _sparse(n: int) -> SparseVector:
    terms = sorted({n % 7, 10 + n % 3, 100 + n})
    return SparseVector(terms, [1.0 + (t % 5) / 10 for t in terms])


def _payload(n: int, tenant: str | None = None, acl: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"doc_id": f"d{n // 2}", "tenant": tenant or f"t{n % 3}", "source": "s", "text": f"c{n}"}
    if acl is not None:
        out["acl"] = acl
    return out


# ------------------------------------------------------------------------------------------------ store level
@pytest.fixture(params=MODES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PointStore]:
    if request.param == "edge":
        edge = EdgeStore.create(tmp_path / "shard", StoreSchema(dim=DIM))
        yield edge
        edge.close()
    else:
        from qdrant_client import QdrantClient

        client = QdrantClient(":memory:")
        yield ClientStore.create(client, "c", StoreSchema(dim=DIM))
        client.close()


def _fill(store: PointStore, n: int = 60) -> None:
    acl = {0: ["red"], 1: ["blue"], 2: None}
    store.upsert(
        [StoredPoint(_cid(i), _vec(i), _sparse(i), _payload(i, acl=acl[i % 4] if i % 4 < 3 else [])) for i in range(n)]
    )


def test_dense_search_is_exact_and_filters_fill_top_k(store: PointStore) -> None:
    _fill(store)
    query = _vec(1000)
    vectors = np.stack([_vec(i) for i in range(60)])
    order = np.argsort(-(vectors @ query))
    hits = store.search_dense(query, limit=10)
    assert [h.id for h in hits] == [_cid(int(i)) for i in order[:10]]
    assert [round(h.score, 5) for h in hits] == [round(float(vectors[i] @ query), 5) for i in order[:10]]
    tenant = [int(i) for i in order if i % 3 == 1]
    hits = store.search_dense(query, limit=10, flt=PointFilter.of({"tenant": ["t1"]}), payload=True)
    assert [h.id for h in hits] == [_cid(i) for i in tenant[:10]]  # top-k filled from permitted points only
    assert all(h.payload and h.payload["tenant"] == "t1" for h in hits)


def test_acl_matches_any_group_or_no_acl(store: PointStore) -> None:
    _fill(store)
    flt = PointFilter.of({"acl": ["red"]}, or_missing=["acl"])
    ids = {h.id for h in store.search_dense(_vec(5), limit=60, flt=flt)}
    # i % 4 == 0: ["red"]; 1: ["blue"]; 2: no acl key (public); 3: [] (empty list: no group, treated as public)
    assert ids == {_cid(i) for i in range(60) if i % 4 in (0, 2, 3)}
    assert store.count(PointFilter.of({"acl": ["blue", "red"]})) == 30


def test_sparse_search_applies_idf(store: PointStore) -> None:
    _fill(store)
    # term 0 is in the 9 points with n % 7 == 0, term 100 + 5 only in point 5: a rare term must weigh more.
    query = SparseVector([0, 105], [1.0, 1.0])
    hits = store.search_sparse(query, limit=20)
    assert hits[0].id == _cid(5)
    n, df_common = 60, 9
    idf_rare = math.log((n - 1 + 0.5) / (1 + 0.5) + 1)
    idf_common = math.log((n - df_common + 0.5) / (df_common + 0.5) + 1)
    assert hits[0].score == pytest.approx(_sparse(5).values[_sparse(5).indices.index(105)] * idf_rare, rel=1e-5)
    assert {h.id for h in hits[1:]} == {_cid(i) for i in range(60) if i % 7 == 0}
    assert hits[1].score == pytest.approx(1.0 * idf_common, rel=1e-5)
    assert store.search_sparse(SparseVector([], []), limit=5) == []


def test_hybrid_fuses_by_rrf(store: PointStore) -> None:
    _fill(store)
    dense_q, sparse_q = _vec(7), SparseVector([107], [1.0])
    dense = [h.id for h in store.search_dense(dense_q, limit=20)]
    sparse = [h.id for h in store.search_sparse(sparse_q, limit=20)]
    hits = store.search_hybrid(HybridRequest(dense_q, sparse_q, depth=20, rrf_k=60), limit=5)
    scores: dict[str, float] = {}
    for weight, ids in ((1.0, dense), (1.0, sparse)):
        for rank, key in enumerate(ids, start=1):
            scores[key] = scores.get(key, 0.0) + weight / (60 + rank)
    assert hits[0].id == _cid(7) == max(scores, key=lambda k: scores[k])
    # Rank conventions differ (Edge 0.9 scores 1/(k + rank) from rank 0, qdrant-client 1.20 from rank 1), so the
    # order is the contract: both fuse the same two lists into the same ranking. Retriever fuses in Python.
    ranked = sorted(scores.values(), reverse=True)
    assert [round(scores[h.id], 9) for h in hits] == [round(s, 9) for s in ranked[:5]]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))


def test_upsert_overwrites_delete_removes_and_reads_back(store: PointStore) -> None:
    _fill(store, 10)
    store.upsert([StoredPoint(_cid(3), _vec(99), _sparse(3), _payload(3, tenant="moved"))])
    store.delete([_cid(4), _cid(12345)])
    assert store.count() == 9
    got = {p.id: p for p in store.retrieve([_cid(3), _cid(4)], dense=True)}
    assert set(got) == {_cid(3)} and got[_cid(3)].payload["tenant"] == "moved"  # type: ignore[index]
    np.testing.assert_allclose(got[_cid(3)].dense, _vec(99), rtol=1e-5)  # type: ignore[arg-type]
    scrolled = list(store.scroll(sparse=True, payload=False))
    assert len(scrolled) == 9 and all(p.sparse is not None and p.payload is None for p in scrolled)
    store.delete_where(PointFilter((Match("tenant", ("moved",)),)))
    assert store.count() == 8


def test_bad_vectors_are_refused(store: PointStore) -> None:
    with pytest.raises(IndexError_, match="dimension"):
        store.upsert([StoredPoint(_cid(1), np.ones(DIM + 1, np.float32), _sparse(1), {})])
    with pytest.raises(IndexError_, match="NaN"):
        store.search_dense(np.full(DIM, np.nan, np.float32), limit=3)


# ------------------------------------------------------------------------------------------------ index level
class Unclosable:
    """One in-memory qdrant-client instance stands in for a server every caller connects to."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def close(self) -> None:
        pass


@pytest.fixture(params=MODES)
def make_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., VectorIndex]]:
    """A factory of VectorIndex views of one collection; each call may use its own RAGOPS_HOME (its own disk)."""
    server = None
    if request.param == "server":
        from qdrant_client import QdrantClient

        server = QdrantClient(":memory:")

    def make(home: str = "a", **qdrant: Any) -> VectorIndex:
        settings = Settings(home=tmp_path / home, cache=tmp_path / "cache")
        settings = settings.model_copy(
            update={"qdrant": settings.qdrant.model_copy(update={"writer_wait_seconds": 0.0, **qdrant})}
        )
        factory = (lambda: Unclosable(server)) if server is not None else None  # type: ignore[return-value]
        return VectorIndex(settings, client_factory=factory)  # type: ignore[arg-type]

    make.server = server  # type: ignore[attr-defined]
    yield make
    if server is not None:
        server.close()


def _docs(chunks: dict[str, list[int]]) -> dict[str, DocEntry]:
    return {d: DocEntry(d, f"h{sorted(c)}", "src", "s", d, tuple(_cid(i) for i in c)) for d, c in chunks.items()}


def _write(index: VectorIndex, chunks: dict[str, list[int]], *, delete: list[int] = (), tenant: str | None = None):  # type: ignore[assignment]
    writer = index.begin(embedder=IDENTITY, chunking=CHUNKING, avgdl=10.0, run_id="r")
    ids = [i for c in chunks.values() for i in c]
    writer.upsert_points(
        [_cid(i) for i in ids],
        np.stack([_vec(i) for i in ids]) if ids else np.empty((0, DIM), np.float32),
        [_sparse(i) for i in ids],
        [_payload(i, tenant=tenant) for i in ids],
    )
    writer.delete([_cid(i) for i in delete])
    return writer


def _ids(reader: IndexReader) -> set[str]:
    return {p.id for p in reader.scroll(payload=False)}


def test_versions_publish_atomically_and_old_readers_keep_their_snapshot(
    make_index: Callable[..., VectorIndex],
) -> None:
    index = make_index()
    assert index.current_version() is None
    v1 = _write(index, {"a": [0, 1], "b": [2, 3]}).publish(_docs({"a": [0, 1], "b": [2, 3]}))
    assert v1.version == 1 and index.current_version() == 1 and v1.points == 4
    old = index.open_reader()
    try:
        writer = _write(index, {"b": [4]}, delete=[2, 3], tenant="new")
        assert _ids(old) == {_cid(i) for i in range(4)}  # staged writes are invisible
        with index.reader() as during:
            assert during.version.version == 1 and _ids(during) == {_cid(i) for i in range(4)}
        v2 = writer.publish(_docs({"a": [0, 1], "b": [4]}))
        assert v2.version == 2 and index.current_version() == 2
        assert _ids(old) == {_cid(i) for i in range(4)}  # the old reader keeps version 1
        assert [h.id for h in old.search_dense(_vec(4), limit=1)] != [_cid(4)]
        with index.reader() as new:
            assert _ids(new) == {_cid(0), _cid(1), _cid(4)}
            hit = new.search_dense(_vec(4), limit=1, payload=True)[0]
            assert hit.id == _cid(4) and hit.payload is not None and hit.payload["tenant"] == "new"
            assert not any(k.startswith("_ragops") for k in hit.payload)
            assert new.count(PointFilter.of({"tenant": ["new"]})) == 1
            assert new.sample_vectors(2).shape == (2, DIM)
            assert {p.id for p in new.retrieve([_cid(4), _cid(2)], dense=True)} == {_cid(4)}
        with index.reader(1) as pinned:  # a kept version stays readable (rollback)
            assert _ids(pinned) == {_cid(i) for i in range(4)}
    finally:
        old.close()
    manifest = index.manifest()
    assert manifest is not None and set(manifest.docs["b"].chunk_ids) == {_cid(4)}


def test_rewriting_a_chunk_supersedes_it_for_new_readers_only(make_index: Callable[..., VectorIndex]) -> None:
    index = make_index()
    _write(index, {"a": [0, 1]}).publish(_docs({"a": [0, 1]}))
    with index.reader() as old:
        _write(index, {"a": [0, 1]}, tenant="moved").publish(_docs({"a": [0, 1]}))
        assert {h.payload["tenant"] for h in old.search_dense(_vec(0), limit=5, payload=True)} <= {"t0", "t1"}  # type: ignore[index]
    with index.reader() as new:
        assert new.count() == 2
        assert {h.payload["tenant"] for h in new.search_dense(_vec(0), limit=5, payload=True)} == {"moved"}  # type: ignore[index]


def test_publish_refuses_a_manifest_that_does_not_match(make_index: Callable[..., VectorIndex]) -> None:
    index = make_index()
    writer = _write(index, {"a": [0, 1]})
    with pytest.raises(IndexError_, match="manifest lists 3"):
        writer.publish(_docs({"a": [0, 1, 2]}))
    writer.abort()
    assert index.current_version() is None
    _write(index, {"a": [0]}).publish(_docs({"a": [0]}))
    with index.reader() as reader:
        assert _ids(reader) == {_cid(0)}


def test_sparse_idf_is_that_of_the_version(make_index: Callable[..., VectorIndex]) -> None:
    """Superseded and staged points must not count in a version's BM25 statistics."""
    index = make_index()
    _write(index, {"a": list(range(20))}).publish(_docs({"a": list(range(20))}))
    with index.reader() as reader:
        before = reader.search_sparse(SparseVector([0, 105], [1.0, 1.0]), limit=5)
    _write(index, {"b": [100 + i for i in range(10)]})  # staged, never published (the writer object is dropped)
    index2 = make_index()
    with index2.reader() as reader:
        after = reader.search_sparse(SparseVector([0, 105], [1.0, 1.0]), limit=5)
    assert [round(h.score, 5) for h in after] == [round(h.score, 5) for h in before]  # ties may reorder
    assert after[0].id == before[0].id


def test_a_second_writer_fails_clearly_and_the_index_stays_exact(make_index: Callable[..., VectorIndex]) -> None:
    index = make_index()
    _write(index, {"a": [0]}).publish(_docs({"a": [0]}))
    first = _write(index, {"b": [1]})
    with pytest.raises(WriterBusy, match="being written by another ingestion"):
        make_index().begin(embedder=IDENTITY, chunking=CHUNKING, avgdl=1.0, run_id="second")
    first.publish(_docs({"a": [0], "b": [1]}))
    second = _write(index, {"c": [2]})  # free again once the first published
    second.publish(_docs({"a": [0], "b": [1], "c": [2]}))
    with index.reader() as reader:
        assert _ids(reader) == {_cid(0), _cid(1), _cid(2)}


def test_a_second_writer_waits_for_the_first(make_index: Callable[..., VectorIndex]) -> None:
    index = make_index()
    waiting = make_index(writer_wait_seconds=30.0)
    first = _write(index, {"a": [0]})
    done: list[int] = []

    def second() -> None:
        writer = _write(waiting, {"b": [1]})
        done.append(writer.version)
        base = writer.base
        assert base is not None
        writer.publish({**base.docs, **_docs({"b": [1]})})

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.5)
    assert not done  # still waiting
    first.publish(_docs({"a": [0]}))
    thread.join(20)
    assert done == [2]
    with index.reader() as reader:
        assert _ids(reader) == {_cid(0), _cid(1)}


def test_replicas_with_their_own_disks_see_one_publish(make_index: Callable[..., VectorIndex]) -> None:
    worker, api = make_index("worker"), make_index("api-replica")
    _write(worker, {"a": [0, 1]}).publish(_docs({"a": [0, 1]}))
    if not worker.server_mode:
        assert api.current_version() is None  # embedded: each disk is its own index (one machine)
        return
    assert api.current_version() == 1 and api.manifest() == worker.manifest()
    with api.reader(expect=IDENTITY) as reader:
        assert _ids(reader) == {_cid(0), _cid(1)}
    other = EmbedderIdentity(name="x", weights_sha256="b" * 64, dim=DIM, max_tokens=128)
    with pytest.raises(EmbedderMismatchError):
        api.open_reader(expect=other)


def test_garbage_collection_keeps_what_kept_versions_see(make_index: Callable[..., VectorIndex]) -> None:
    index = make_index(keep_versions=2)
    docs: dict[str, list[int]] = {}
    for n in range(4):
        docs[f"d{n}"] = [n]
        docs.pop(f"d{n - 2}", None)
        _write(index, {f"d{n}": [n]}, delete=[n - 2] if n >= 2 else []).publish(_docs(docs))
    assert index.versions() == [3, 4]
    with index.reader(3) as v3, index.reader(4) as v4:
        assert _ids(v3) == {_cid(1), _cid(2)} and _ids(v4) == {_cid(2), _cid(3)}
    with pytest.raises(IndexError_, match="no version 2"):
        index.open_reader(2)


def _catalog_rows(make: Callable[..., VectorIndex], index: VectorIndex) -> int:
    """Document rows the catalog stores, over all versions (SQLite table or points of the meta collection)."""
    server = make.server  # type: ignore[attr-defined]
    if server is None:
        with sqlite3.connect(index.root / CATALOG_FILE) as conn:
            return int(conn.execute("SELECT count(*) FROM docs").fetchone()[0])
    from qdrant_client import models

    kind = models.Filter(must=[models.FieldCondition(key="kind", match=models.MatchValue(value="doc"))])
    return int(server.count(index.meta_collection, count_filter=kind).count)


def test_a_publish_writes_the_rows_of_changed_documents_only(make_index: Callable[..., VectorIndex]) -> None:
    index = make_index(keep_versions=3)
    docs = {f"d{n}": [n] for n in range(20)}
    published = {1: _docs(docs)}
    _write(index, docs).publish(published[1])
    assert _catalog_rows(make_index, index) == 20
    changed = {"d3": [3, 30], "new": [40]}  # one document grows, one arrives, one leaves
    docs = {**{k: v for k, v in docs.items() if k != "d5"}, **changed}
    published[2] = _docs(docs)
    _write(index, {"d3": [3, 30], "new": [40]}, delete=[5]).publish(published[2])
    assert _catalog_rows(make_index, index) == 22  # 20 + the new entries of d3 and "new"; d5's row ended
    published[3] = _docs(docs)
    _write(index, {}).publish(published[3])  # nothing changed: nothing written
    assert _catalog_rows(make_index, index) == 22
    for version, expected in published.items():
        manifest = index.manifest(version)
        assert manifest is not None and dict(manifest.docs) == expected and manifest.version.documents == len(expected)
    _write(index, {}).publish(published[3])  # version 4: version 1 is forgotten, with the rows only it saw
    assert index.versions() == [2, 3, 4]
    assert _catalog_rows(make_index, index) == 20  # d5's row and d3's first entry are gone
    assert dict(index.manifest(2).docs) == published[2]  # type: ignore[union-attr]


def test_a_publish_killed_before_its_switch_leaves_the_published_version(
    make_index: Callable[..., VectorIndex], monkeypatch: pytest.MonkeyPatch
) -> None:
    index = make_index()
    v1 = _docs({"a": [0], "b": [1]})
    _write(index, {"a": [0], "b": [1]}).publish(v1)
    doomed = _write(index, {"a": [0, 2]})
    with monkeypatch.context() as patch:
        patch.setattr(catalog_module, "now", lambda: (_ for _ in ()).throw(RuntimeError("killed")))
        with pytest.raises(RuntimeError, match="killed"):  # rows written, the switch never made
            doomed.publish(_docs({"a": [0, 2], "b": [1]}))
    doomed._close()  # the process dies (its lock is released by the kernel or the lease expiry)
    assert index.current_version() == 1 and index.versions() == [1]
    assert dict(index.manifest().docs) == v1  # type: ignore[union-attr]
    _write(index, {"b": [1, 3]}).publish(_docs({"a": [0], "b": [1, 3]}))
    manifest = index.manifest()
    assert manifest is not None and dict(manifest.docs) == _docs({"a": [0], "b": [1, 3]})  # no stale rows of "a"
    with index.reader() as reader:
        assert _ids(reader) == {_cid(0), _cid(1), _cid(3)}


def test_manifests_of_an_earlier_release_are_read_and_converted(
    make_index: Callable[..., VectorIndex], tmp_path: Path
) -> None:
    """Earlier releases kept one whole manifest per version (``CURRENT`` and ``versions/v*.json`` embedded, one
    point per version in server mode); they are read as they are and become rows."""
    index = make_index()
    v1, v2 = _docs({"a": [0], "b": [1]}), _docs({"a": [0], "b": [1, 2]})
    _write(index, {"a": [0], "b": [1]}).publish(v1)
    _write(index, {"b": [1, 2]}).publish(v2)
    manifests = {v: index.manifest(v) for v in (1, 2)}
    server = make_index.server  # type: ignore[attr-defined]
    if server is None:  # the files an earlier release wrote, and no catalog
        (index.root / CATALOG_FILE).unlink()
        (index.root / "versions").mkdir()
        for v, m in manifests.items():
            (index.root / "versions" / f"v{v:06d}.json").write_text(json.dumps(m.to_json()))  # type: ignore[union-attr]
        (index.root / "versions" / "v000003.json").write_text("{}")  # a publish killed before its switch
        (index.root / "CURRENT").write_text('{"version": 2}')
    else:  # the meta collection holds one whole-manifest point per version instead of rows and records
        from qdrant_client import models

        server.delete(index.meta_collection, points_selector=models.FilterSelector(filter=models.Filter()))
        legacy = [
            models.PointStruct(
                id=str(uuid.uuid5(POINT_NAMESPACE, f"manifest\x1f{v}")),
                vector={},
                payload={"kind": "manifest", "version": v, "manifest": json.dumps(m.to_json())},  # type: ignore[union-attr]
            )
            for v, m in manifests.items()
        ]
        server.upsert(index.meta_collection, points=legacy)
    assert index.current_version() == 2 and index.versions() == [1, 2]
    assert index.manifest(1) == manifests[1] and index.manifest(2) == manifests[2]
    _write(index, {"c": [3]}).publish({**v2, **_docs({"c": [3]})})
    assert index.manifest(1) == manifests[1] and index.manifest(2) == manifests[2]
    assert dict(index.manifest(3).docs) == {**v2, **_docs({"c": [3]})}  # type: ignore[union-attr]
    assert _catalog_rows(make_index, index) == 4  # a, b, b's second entry, c
    if server is None:
        assert not (index.root / "CURRENT").exists() and not (index.root / "versions").exists()


def test_erasure_removes_a_document_from_every_kept_version(make_index: Callable[..., VectorIndex]) -> None:
    index = make_index()
    v1 = _docs({"d0": [0, 1], "d1": [2, 3]})
    _write(index, {"d0": [0, 1], "d1": [2, 3]}).publish(v1)
    v2 = _docs({"d0": [0, 1], "d1": [2], "d2": [4, 5]})
    _write(index, {"d2": [4, 5]}, delete=[3]).publish(v2)  # d1 changes (loses chunk 3), d2 arrives
    assert _catalog_rows(make_index, index) == 4
    target = ErasureTarget.of(collection=index.collection, doc="d1", source=None, tenant=None)
    erased = index.erase(target)
    assert erased.doc_ids == ("d1",) and erased.versions_rewritten == (1, 2) and erased.published == 3
    for version, docs in ((1, v1), (2, v2), (3, v2)):
        manifest = index.manifest(version)
        assert manifest is not None and dict(manifest.docs) == {k: d for k, d in docs.items() if k != "d1"}
        assert manifest.version.documents == len(docs) - 1
    assert _catalog_rows(make_index, index) == 2  # d0 and d2: no row of d1 is left in any version
    with index.reader(1) as old, index.reader() as new:
        assert _ids(old) == {_cid(0), _cid(1)} and _ids(new) == {_cid(0), _cid(1), _cid(4), _cid(5)}


def test_a_writer_reuses_a_known_manifest_only_while_it_is_current(make_index: Callable[..., VectorIndex]) -> None:
    index = make_index()
    _write(index, {"a": [0]}).publish(_docs({"a": [0]}))
    first = index.manifest()
    _write(index, {"b": [1]}).publish(_docs({"a": [0], "b": [1]}))
    stale = index.begin(embedder=IDENTITY, chunking=CHUNKING, avgdl=1.0, run_id="r", known=first)
    assert stale.base == index.manifest(2)  # published since the caller read it: read again
    stale.abort()
    current = index.manifest()
    writer = index.begin(embedder=IDENTITY, chunking=CHUNKING, avgdl=1.0, run_id="r", known=current)
    assert writer.base is current
    writer.abort()


def test_an_unreadable_catalog_is_reported_not_served(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "a", cache=tmp_path / "cache")
    index = VectorIndex(settings)
    _write(index, {"a": [0]}).publish(_docs({"a": [0]}))
    path = index.root / CATALOG_FILE
    good = path.read_bytes()
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(IndexError_, match="catalog .* is unreadable"):
        index.current_version()
    path.write_bytes(good)
    assert index.current_version() == 1


def _killed_writer(home: str, tmp: str) -> None:  # pragma: no cover - runs in a child process
    settings = Settings(home=Path(tmp) / home, cache=Path(tmp) / "cache")
    index = VectorIndex(settings)
    writer = index.begin(embedder=IDENTITY, chunking=CHUNKING, avgdl=10.0, run_id="doomed")
    n = 0
    while True:  # write until killed
        ids = list(range(1000 + n * 50, 1050 + n * 50))
        writer.upsert_points(
            [_cid(i) for i in ids],
            np.stack([_vec(i) for i in ids]),
            [_sparse(i) for i in ids],
            [_payload(i) for i in ids],
        )
        writer.delete([_cid(0)])
        n += 1
        if n == 2:
            Path(tmp, "ready").touch()


def test_kill_9_mid_write_converges(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "a", cache=tmp_path / "cache")
    index = VectorIndex(settings)
    _write(index, {"a": [0, 1]}).publish(_docs({"a": [0, 1]}))
    child = multiprocessing.get_context("spawn").Process(target=_killed_writer, args=("a", str(tmp_path)))
    child.start()
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    with index.reader() as reader:  # the published version is intact
        assert _ids(reader) == {_cid(0), _cid(1)}
    writer = _write(index, {"b": [2]})  # the lock died with the writer; its staged points are removed
    assert writer.version == 2 and writer.count() == 3
    writer.publish(_docs({"a": [0, 1], "b": [2]}))
    with index.reader() as reader:
        assert _ids(reader) == {_cid(0), _cid(1), _cid(2)}
        assert reader.count() == 3


def test_an_index_of_an_older_release_is_refused_with_the_fix(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "a", cache=tmp_path / "cache")
    index = VectorIndex(settings)
    (index.root / "v000001" / "qdrant").mkdir(parents=True)  # qdrant-client local-mode layout
    (index.root / "CURRENT").write_text('{"version": 1}')
    with pytest.raises(IndexError_, match="older ragops.*run `ragops ingest` again"):
        index.open_reader()
    with pytest.raises(IndexError_, match="older ragops"):
        index.begin(embedder=IDENTITY, chunking=CHUNKING, avgdl=1.0, run_id="r")
