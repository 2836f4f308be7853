"""The in-memory search of embedded indexes returns what qdrant-client's local mode returns, without its cost.

Every comparison runs the same question through two retrievers over the same reader: the accelerated one (default)
and one with ``local_accelerator=False``, i.e. llama-index's ``QdrantVectorStore`` over qdrant-client local mode,
the reference. Synthetic collections in a ``:memory:`` Qdrant check the arithmetic (IDF, float64 cosine order,
filter semantics) on cases the tiny corpus cannot show.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.embed import Embedder
from pipelines.index import DENSE_VECTOR, SPARSE_VECTOR, IndexReader, VectorIndex
from pipelines.settings import Settings
from rag.engine import RagEngine
from rag.errors import RetrievalError
from rag.local_search import LocalSearchIndex
from rag.retrieve import Retriever
from rag.types import Filters, RetrievalConfig, RetrievedChunk, StackConfig
from tests.unit.rag.conftest import BuiltIndex, copy_index

pytestmark = pytest.mark.slow

QUESTIONS = [
    "When did Mount Kerrigan last erupt?",
    "How high above the planet does the weather satellite fly?",
    "Burrmaster grind settings and warranty",
    "Who won the chess club championship in 2023?",
    "rye sourdough bread oven",
    "xylophone quasar zeppelin",  # no term in the corpus: the sparse list is empty, hybrid is dense alone
    "what is it?",  # only stop words: hybrid falls back to dense today
]

FILTERS: list[Filters | None] = [
    None,
    {"tenant": "globex"},
    {"tenant": ["acme", "globex"]},
    {"source": "__SOURCE__"},
    {"doc_id": ["acme/bakery.md", "globex/chess.md"]},
    {"tenant": "acme", "doc_id": ["acme/volcano.md", "globex/kerrigan-hike.md"]},
    {"tenant": "nobody"},  # matches nothing
    {"tenant": "acme", "doc_id": "globex/chess.md"},  # each key matches, together nothing
]


def assert_same(fast: Sequence[RetrievedChunk], slow: Sequence[RetrievedChunk]) -> None:
    """Same chunks in the same order, scores and similarities within 1e-5 (the corpus has no exact score ties)."""
    assert [c.chunk_id for c in fast] == [c.chunk_id for c in slow]
    for a, b in zip(fast, slow, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-5)
        assert a.similarity is not None and b.similarity is not None
        assert a.similarity == pytest.approx(b.similarity, abs=1e-5)
        assert (a.doc_id, a.title, a.source, a.position, a.text, a.tenant, dict(a.metadata)) == (
            b.doc_id,
            b.title,
            b.source,
            b.position,
            b.text,
            b.tenant,
            dict(b.metadata),
        )


def pair(reader: IndexReader, embedder: Embedder, config: RetrievalConfig) -> tuple[Retriever, Retriever]:
    """The accelerated retriever and the reference one (qdrant-client local mode through llama-index)."""
    fast = Retriever(reader, embedder, config)
    slow = Retriever(reader, embedder, config, local_accelerator=False)
    return fast, slow


@pytest.fixture(scope="module")
def some_source(reader: IndexReader) -> str:
    records, _ = reader.client.scroll(reader.collection, limit=1, with_payload=["source"])
    return str((records[0].payload or {})["source"])


def resolve(filters: Filters | None, source: str) -> Filters | None:
    if filters is not None and filters.get("source") == "__SOURCE__":
        return {"source": source}
    return filters


# ------------------------------------------------------------------------------------ retriever: both paths
@pytest.mark.parametrize("top_k", [1, 3, 100])
@pytest.mark.parametrize("question", QUESTIONS)
def test_dense_equals_qdrant_local_mode(reader: IndexReader, embedder: Embedder, question: str, top_k: int) -> None:
    fast, slow = pair(reader, embedder, RetrievalConfig(mode="dense", top_k=1, candidates=1))
    vector = embedder.encode([question])[0]
    expected = slow.search(question, vector, top_k=top_k)
    assert expected, "the reference found nothing"
    assert_same(fast.search(question, vector, top_k=top_k), expected)


@pytest.mark.parametrize(("top_k", "candidates"), [(1, 2), (2, 3), (3, 30)])
@pytest.mark.parametrize("question", QUESTIONS)
def test_hybrid_equals_qdrant_local_mode(
    reader: IndexReader, embedder: Embedder, question: str, top_k: int, candidates: int
) -> None:
    """Dense and sparse lists ``max(candidates, top_k)`` deep, fused, cut to ``top_k``: as llama-index does it."""
    config = RetrievalConfig(mode="hybrid", top_k=top_k, candidates=candidates)
    fast, slow = pair(reader, embedder, config)
    assert_same(fast.retrieve(question), slow.retrieve(question))
    vector = embedder.encode([question])[0]
    assert_same(fast.search(question, vector, top_k=5), slow.search(question, vector, top_k=5))  # deeper lists


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
@pytest.mark.parametrize("filters", FILTERS)
def test_filters_equal_qdrant_local_mode(
    reader: IndexReader, embedder: Embedder, some_source: str, mode: str, filters: Filters | None
) -> None:
    config = RetrievalConfig(mode=mode, top_k=4, candidates=4)  # type: ignore[arg-type]
    fast, slow = pair(reader, embedder, config)
    wanted = resolve(filters, some_source)
    for question in ("Mount Kerrigan volcano hike", "coffee grinder", "what is it?"):
        expected = slow.retrieve(question, filters=wanted)
        assert_same(fast.retrieve(question, filters=wanted), expected)
        if filters is not None and filters.get("tenant") == "nobody":
            assert expected == []


def test_retrieve_many_with_per_question_filters_equals_qdrant(reader: IndexReader, embedder: Embedder) -> None:
    fast, slow = pair(reader, embedder, RetrievalConfig(mode="hybrid", top_k=3, candidates=5))
    filters: list[Filters | None] = [None, {"tenant": "globex"}, {"tenant": "nobody"}, {"doc_id": "acme/bakery.md"}]
    questions = QUESTIONS[:4]
    for got, expected in zip(
        fast.retrieve_many(questions, filters=filters), slow.retrieve_many(questions, filters=filters), strict=True
    ):
        assert_same(got, expected)


# ---------------------------------------------------------------------------------- the lists themselves
def test_sparse_scores_are_bit_identical_to_qdrant_and_dense_scores_its_float64(
    reader: IndexReader, embedder: Embedder
) -> None:
    """Each list against ``query_points`` directly: IDF over the collection, float32 BM25 scores, float64 cosines."""
    from qdrant_client import models

    memory = LocalSearchIndex.load(reader.client, reader.collection)
    bm25 = Retriever(reader, embedder, RetrievalConfig()).bm25
    for question in QUESTIONS[:6]:
        query = bm25.encode_query(question)
        expected = reader.client.query_points(
            reader.collection,
            query=models.SparseVector(indices=query.indices, values=query.values),
            using=SPARSE_VECTOR,
            limit=50,
        ).points
        got = memory.sparse(query.indices, query.values, limit=50)
        assert list(got.ids) == [str(p.id) for p in expected]
        assert list(got.scores) == [p.score for p in expected]  # exact: same float64 sums, same float32 cast
        vector = embedder.encode([question])[0]
        dense = reader.client.query_points(reader.collection, query=vector.tolist(), using=DENSE_VECTOR, limit=50)
        hits = memory.dense(vector, limit=50)
        assert list(hits.ids) == [str(p.id) for p in dense.points]
        assert np.allclose(hits.scores, [p.score for p in dense.points], rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------ synthetic :memory: checks
Point = tuple[str, list[float] | None, tuple[list[int], list[float]] | None, dict[str, Any]]


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[Callable[[list[Point]], Any]]:
    """Write points into an on-disk local-mode collection laid out as ragops's, and reopen it as a reader would.

    Reopening matters: a fresh local-mode session holds the stored vectors in float64 (what readers search),
    while the session that wrote them holds float32 copies.
    """
    from qdrant_client import QdrantClient, models

    clients: list[Any] = []

    def build(points: list[Point]) -> Any:
        path = str(tmp_path / f"q{len(clients)}")
        writer = QdrantClient(path=path)
        dim = next(len(d) for _, d, _, _ in points if d is not None)
        writer.create_collection(
            "c",
            vectors_config={DENSE_VECTOR: models.VectorParams(size=dim, distance=models.Distance.COSINE)},
            sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        structs = []
        for point_id, dense, sparse, payload in points:
            vector: dict[str, Any] = {}
            if dense is not None:
                vector[DENSE_VECTOR] = dense
            if sparse is not None:
                vector[SPARSE_VECTOR] = models.SparseVector(indices=sparse[0], values=sparse[1])
            structs.append(models.PointStruct(id=point_id, vector=vector, payload=payload))
        writer.upsert("c", points=structs, wait=True)
        writer.close()
        client = QdrantClient(path=path)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def qdrant_filter(filters: dict[str, list[str]] | None) -> Any:
    from qdrant_client import models

    if not filters:
        return None
    return models.Filter(
        must=[models.FieldCondition(key=k, match=models.MatchAny(any=list(v))) for k, v in filters.items()]
    )


def random_points(n: int, seed: int) -> list[Point]:
    rng = np.random.default_rng(seed)
    tenants: list[Any] = ["a", "b", ["a", "c"], ["c"], 1, None, "A"]
    points = []
    for i in range(n):
        dense = rng.standard_normal(16).astype(np.float32)
        dense /= np.linalg.norm(dense)
        terms = sorted(set(rng.choice(60, size=int(rng.integers(0, 8)), replace=False).tolist()))
        values = [float(v) for v in rng.uniform(0.1, 2.0, size=len(terms))]
        sparse = None if i % 17 == 5 else (terms, values)  # some points lack the sparse vector, some have it empty
        tenant = tenants[i % len(tenants)]
        payload: dict[str, Any] = {"doc_id": f"d{i % 9}", "source": "s" if i % 3 else "t"}
        if tenant is not None:
            payload["tenant"] = tenant
        points.append((str(uuid.UUID(int=int(rng.integers(0, 2**63)))), dense.tolist(), sparse, payload))
    return points


@pytest.mark.parametrize(
    "filters",
    [None, {"tenant": ["a"]}, {"tenant": ["c", "b"]}, {"tenant": ["1"]}, {"source": ["t"], "doc_id": ["d1", "d2"]}],
)
def test_synthetic_collection_equals_qdrant(
    stored: Callable[[list[Point]], Any], filters: dict[str, list[str]] | None
) -> None:
    """IDF counts points that have the sparse vector (also empty ones); list payloads match any element; ``1``
    (an integer) never matches the string ``"1"``; a point without the key never matches."""
    from qdrant_client import models

    client = stored(random_points(400, seed=7))
    memory = LocalSearchIndex.load(client, "c", page_size=64)  # several pages
    allowed = memory.filter_mask(filters or {})
    rng = np.random.default_rng(1)
    for _ in range(20):
        terms = sorted(set(rng.choice(70, size=int(rng.integers(1, 6)), replace=False).tolist()))  # some unknown
        values = [float(v) for v in rng.uniform(0.5, 1.5, size=len(terms))]
        expected = client.query_points(
            "c",
            query=models.SparseVector(indices=terms, values=values),
            using=SPARSE_VECTOR,
            query_filter=qdrant_filter(filters),
            limit=25,
        ).points
        got = memory.sparse(terms, values, limit=25, allowed=allowed)
        assert list(got.ids) == [str(p.id) for p in expected]
        assert list(got.scores) == [p.score for p in expected]
        query = rng.standard_normal(16)
        dense = client.query_points(
            "c", query=query.tolist(), using=DENSE_VECTOR, query_filter=qdrant_filter(filters), limit=25
        ).points
        hits = memory.dense(query, limit=25, allowed=allowed)
        assert list(hits.ids) == [str(p.id) for p in dense]
        assert np.allclose(hits.scores, [p.score for p in dense], rtol=0, atol=1e-12)


def test_dense_order_is_qdrants_float64_order_where_float32_gets_it_wrong(
    stored: Callable[[list[Point]], Any],
) -> None:
    """Cosines about 1e-8 apart: the float32 scan misranks them, the float64 rescoring of everything within the
    rounding bound of the k-th float32 score still returns exactly Qdrant's top k."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal(64)
    base /= np.linalg.norm(base)
    points: list[Point] = []
    for i in range(80):
        vector = base + 1e-7 * rng.standard_normal(64)
        points.append((str(uuid.UUID(int=i + 1)), vector.tolist(), None, {}))
    client = stored(points)
    memory = LocalSearchIndex.load(client, "c")
    expected = client.query_points("c", query=base.tolist(), using=DENSE_VECTOR, limit=5).points
    float32_top = np.argsort(-(memory._dense32 @ base.astype(np.float32)), kind="stable")[:5]
    assert {memory.ids[r] for r in float32_top.tolist()} != {str(p.id) for p in expected}, "float32 must misrank"
    got = memory.dense(base, limit=5)
    assert list(got.ids) == [str(p.id) for p in expected]
    assert list(got.scores) == pytest.approx([p.score for p in expected], abs=1e-12)


def test_sparse_ties_come_back_in_qdrants_own_order(stored: Callable[[list[Point]], Any]) -> None:
    """BM25 ties are common; the ranking replays Qdrant's sort over its internal order, so even they match."""
    from qdrant_client import models

    rng = np.random.default_rng(11)
    points: list[Point] = []
    for i in range(300):
        terms = sorted(set(rng.choice(6, size=int(rng.integers(1, 4)), replace=False).tolist()))
        values = [float(rng.choice([0.5, 1.0])) for _ in terms]  # few distinct scores: ties everywhere
        points.append((str(uuid.UUID(int=int(rng.integers(0, 2**63)))), [1.0, float(i)], (terms, values), {}))
    points[7] = (points[7][0], points[7][1], points[7][2], {"tenant": "t"})
    points[9] = (points[9][0], points[9][1], points[9][2], {"tenant": "t"})
    client = stored(points)
    memory = LocalSearchIndex.load(client, "c")
    assert memory.qdrant_order
    for terms in ([0], [1, 2], [0, 3, 5], [4, 9]):
        values = [1.0] * len(terms)
        for filters in (None, {"tenant": ["t"]}):
            expected = client.query_points(
                "c",
                query=models.SparseVector(indices=terms, values=values),
                using=SPARSE_VECTOR,
                query_filter=qdrant_filter(filters),
                limit=40,
            ).points
            assert len({p.score for p in expected}) < len(expected) or filters, "the case must have ties"
            got = memory.sparse(terms, values, limit=40, allowed=memory.filter_mask(filters or {}))
            assert list(got.ids) == [str(p.id) for p in expected]


def test_without_qdrants_internal_order_ties_go_by_point_id(stored: Callable[[list[Point]], Any]) -> None:
    class ScrollOnly:
        """A client whose internals cannot be read (as a future qdrant-client might be)."""

        def __init__(self, inner: Any) -> None:
            self.scroll = inner.scroll

    ids = [str(uuid.UUID(int=i)) for i in (5, 3, 9, 1)]
    same = [1.0, 0.0, 0.0, 0.0]
    client = stored([(i, same, ([7], [1.0]), {}) for i in ids])
    memory = LocalSearchIndex.load(ScrollOnly(client), "c")  # type: ignore[arg-type]
    assert not memory.qdrant_order
    assert list(memory.dense(np.asarray(same), limit=3).ids) == sorted(ids)[:3]
    assert list(memory.sparse([7], [1.0], limit=3).ids) == sorted(ids)[:3]


def test_bad_queries_are_refused_like_qdrant(reader: IndexReader, embedder: Embedder) -> None:
    memory = LocalSearchIndex.load(reader.client, reader.collection)
    with pytest.raises(ValueError, match="unique"):
        memory.sparse([3, 3], [1.0, 1.0], limit=2)
    with pytest.raises(ValueError, match="NaN"):
        memory.dense(np.full(memory.dim, np.nan), limit=2)
    retriever = Retriever(reader, embedder, RetrievalConfig())
    with pytest.raises(RetrievalError, match="dimension"):
        retriever.search("volcano", np.ones(3, dtype=np.float32), top_k=2)


# ------------------------------------------------------------------------------------ serving behaviour
def test_queries_touch_neither_qdrant_nor_the_lock(
    reader: IndexReader, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After warm-up, searches are numpy only: no client call, and they run while another thread holds the lock
    (the service's chunk lookup holds it to read the client)."""
    retriever = Retriever(reader, embedder, RetrievalConfig(mode="hybrid", top_k=3))
    retriever.warm_up()
    calls: list[str] = []
    for name in ("query_points", "query_batch_points", "retrieve", "scroll", "count"):
        original = getattr(reader.client, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(reader.client, name, spy)
    lock: Any = retriever._lock
    done = threading.Event()

    def query() -> None:
        retriever.retrieve("Burrmaster warranty")
        done.set()

    with lock:
        worker = threading.Thread(target=query)
        worker.start()
        assert done.wait(30), "a query waited for the Qdrant lock"
    worker.join()
    assert calls == []


def test_concurrent_queries_return_what_sequential_ones_do(reader: IndexReader, embedder: Embedder) -> None:
    retriever = Retriever(reader, embedder, RetrievalConfig(mode="hybrid", top_k=3, candidates=5))
    questions = QUESTIONS * 6
    vectors = embedder.encode(questions)
    sequential = [retriever.search(q, v, top_k=3) for q, v in zip(questions, vectors, strict=True)]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(
            pool.map(lambda qv: retriever.search(qv[0], qv[1], top_k=3), zip(questions, vectors, strict=True))
        )
    assert parallel == sequential


def test_a_failed_load_falls_back_to_qdrant(
    reader: IndexReader, embedder: Embedder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> LocalSearchIndex:
        raise MemoryError("no room")

    expected = Retriever(reader, embedder, RetrievalConfig(), local_accelerator=False).retrieve("volcano")
    monkeypatch.setattr(LocalSearchIndex, "load", broken)
    with caplog.at_level("WARNING", logger="rag.retrieve"):
        got = Retriever(reader, embedder, RetrievalConfig()).retrieve("volcano")
    assert_same(got, expected)
    assert "searching through Qdrant" in caplog.text


@pytest.mark.parametrize("flag", ["true", "false"])
def test_setting_switches_the_accelerator(
    settings: Settings,
    built_index: BuiltIndex,
    embedder: Embedder,
    monkeypatch: pytest.MonkeyPatch,
    flag: str,
) -> None:
    monkeypatch.setenv("RAGOPS_QDRANT__LOCAL_ACCELERATOR", flag)
    configured = Settings()
    assert configured.qdrant.local_accelerator is (flag == "true")
    copy_index(built_index, configured)
    version = VectorIndex(configured).current()
    assert version is not None
    config = StackConfig.for_index(version, name="s", retrieval={"mode": "hybrid", "top_k": 2})
    with RagEngine.open(configured, config, embedder=embedder) as engine:
        assert (engine.retriever._memory is not None) is (flag == "true")  # loaded at open (warm-up), or never
        assert engine.retrieve("Burrmaster warranty")[0].doc_id == "globex/grinder.md"


def test_an_empty_collection_answers_nothing(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(tmp_path / "empty"))
    try:
        client.create_collection(
            "c",
            vectors_config={DENSE_VECTOR: models.VectorParams(size=4, distance=models.Distance.COSINE)},
            sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        memory = LocalSearchIndex.load(client, "c")
        assert memory.points == 0
        assert memory.dense(np.ones(4), limit=3).ids == ()
        assert memory.sparse([1, 2], [1.0, 1.0], limit=3).ids == ()
        assert memory.scan(np.ones((2, 4))).shape == (2, 0)
        assert client.query_points("c", query=[1.0, 1.0, 1.0, 1.0], using=DENSE_VECTOR, limit=3).points == []
    finally:
        client.close()
