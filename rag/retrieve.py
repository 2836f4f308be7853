"""Retrieval through llama-index's ``QdrantVectorStore`` over a published index version: dense, or hybrid.

- **Dense** (default): the question is embedded with the index's own embedder and matched against ``text-dense``
  (cosine).
- **Hybrid**: the same dense search plus a BM25 search of ``text-sparse`` (the query side of
  :class:`pipelines.sparse.Bm25Encoder`; Qdrant applies the IDF), fused by weighted reciprocal rank
  (``sum(weight / (rrf_k + rank))``). llama-index issues both searches in one ``query_batch_points`` call and hands
  the two lists to our fusion function.

We call ``vector_store.query`` directly with our own vectors, so embeddings come from :class:`pipelines.embed.Embedder`
in one batched call per request batch (:meth:`Retriever.retrieve_many`), and nothing touches llama-index's global
``Settings`` (no default OpenAI embedder or LLM can ever be constructed). Metadata filters (``tenant``, ``source``,
``doc_id``; equality or any-of) are passed down to Qdrant, so filtering happens inside the search, not after it.

On an embedded (local-mode) index the same searches run on an in-memory copy of the immutable version instead
(:mod:`rag.local_search`): qdrant-client's local mode is pure-Python brute force, and the copy returns the same
lists. The hybrid lists are fused by the same :class:`WeightedRrf`, and hits become nodes through the same
``QdrantVectorStore.parse_to_query_result``, so both paths end in the same :class:`RetrievedChunk`s.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipelines.embed import EmbedderIdentity
from pipelines.errors import EmbedderMismatchError
from pipelines.index import DENSE_VECTOR, SPARSE_VECTOR
from pipelines.sparse import Bm25Encoder
from rag.errors import BadQuery, RetrievalError, StackMismatch
from rag.local_search import LocalSearchIndex, is_local_client
from rag.types import FILTER_KEYS, Filters, RetrievalConfig, RetrievedChunk, StackConfig

if TYPE_CHECKING:
    from llama_index.core.schema import BaseNode
    from llama_index.core.vector_stores.types import MetadataFilters, VectorStoreQueryResult
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    from pipelines.index import IndexReader

logger = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 4000
MAX_FILTER_VALUES = 256


class QueryEncoder(Protocol):
    """What retrieval needs from an embedder (``pipelines.embed.Embedder`` satisfies it)."""

    @property
    def identity(self) -> EmbedderIdentity:
        """The model identity, checked against the index's."""
        ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        ...


# ------------------------------------------------------------------------------------------------------- checks
def _check_encodable(text: str, what: str) -> None:
    """Lone surrogates (JSON "\\udc00") are valid Python text but not UTF-8: tokenizers and logs choke on them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadQuery(f"{what} contains characters that are not valid Unicode text (at position {exc.start})") from exc


def validate_question(question: object) -> str:
    """The stripped question, or BadQuery when it is not a usable string."""
    if not isinstance(question, str):
        raise BadQuery(f"question must be a string, got {type(question).__name__}")
    text = question.strip()
    if not text:
        raise BadQuery("question is empty")
    _check_encodable(text, "question")
    if len(text) > MAX_QUESTION_CHARS:
        raise BadQuery(f"question has {len(text)} characters; the limit is {MAX_QUESTION_CHARS}")
    return text


def validate_filters(filters: Filters | None) -> dict[str, list[str]]:
    """Normalise filters to ``key -> allowed values``; unknown keys, empty lists and non-strings are BadQuery."""
    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise BadQuery(f"filters must be a mapping of key to value(s), got {type(filters).__name__}")
    out: dict[str, list[str]] = {}
    for key, value in filters.items():
        if key not in FILTER_KEYS:
            raise BadQuery(f"unknown filter key {key!r}; allowed: {', '.join(sorted(FILTER_KEYS))}")
        values = [value] if isinstance(value, str) else list(value) if isinstance(value, Sequence) else None
        if values is None or not all(isinstance(v, str) and v for v in values):
            raise BadQuery(f"filter {key!r} must be a non-empty string or a list of non-empty strings")
        for value_text in values:
            _check_encodable(value_text, f"filter {key!r}")
        if not values:
            raise BadQuery(f"filter {key!r} has an empty list of values (it would match nothing)")
        if len(values) > MAX_FILTER_VALUES:
            raise BadQuery(f"filter {key!r} has {len(values)} values; the limit is {MAX_FILTER_VALUES}")
        out[key] = values
    return out


def to_metadata_filters(filters: Mapping[str, list[str]]) -> MetadataFilters | None:
    """llama-index filters (AND of per-key EQ / IN) from validated filters."""
    if not filters:
        return None
    from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

    parts = [
        MetadataFilter(key=key, value=values[0], operator=FilterOperator.EQ)
        if len(values) == 1
        else MetadataFilter(key=key, value=list(values), operator=FilterOperator.IN)
        for key, values in sorted(filters.items())
    ]
    return MetadataFilters(filters=parts, condition=FilterCondition.AND)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------- fusion
@functools.cache
def _fused_result_type() -> type:
    from llama_index.core.vector_stores.types import VectorStoreQueryResult

    @dataclass
    class FusedResult(VectorStoreQueryResult):
        """A fused list that also remembers each id's dense cosine similarity (when the dense side found it)."""

        dense_similarities: dict[str, float] = field(default_factory=dict)

    return FusedResult


@dataclass(frozen=True)
class WeightedRrf:
    """Weighted reciprocal-rank fusion, in llama-index's ``HybridFusionCallable`` shape.

    ``score(d) = dense_weight / (k + rank_dense(d)) + sparse_weight / (k + rank_sparse(d))`` with 1-based ranks;
    a list that misses ``d`` contributes nothing. Ties keep the dense order. llama-index passes ``alpha`` (ignored:
    the weights are part of the stack) and ``top_k``.
    """

    k: int = 60
    dense_weight: float = 1.0
    sparse_weight: float = 1.0

    def __call__(
        self, dense_result: VectorStoreQueryResult, sparse_result: VectorStoreQueryResult, **kwargs: Any
    ) -> VectorStoreQueryResult:
        top_k = int(kwargs.get("top_k") or 10)
        nodes: dict[str, BaseNode] = {}
        dense_sims: dict[str, float] = {}
        for result, is_dense in ((dense_result, True), (sparse_result, False)):
            for rank, node in enumerate(result.nodes or [], start=1):
                nodes.setdefault(node.node_id, node)
                if is_dense and result.similarities is not None:
                    dense_sims[node.node_id] = float(result.similarities[rank - 1])
        ranked = self.rank(
            [n.node_id for n in dense_result.nodes or []], [n.node_id for n in sparse_result.nodes or []], top_k
        )
        fused = _fused_result_type()(
            nodes=[nodes[key] for key, _ in ranked],
            similarities=[score for _, score in ranked],
            ids=[key for key, _ in ranked],
            dense_similarities=dense_sims,
        )
        return fused

    def rank(self, dense_ids: Sequence[str], sparse_ids: Sequence[str], top_k: int) -> list[tuple[str, float]]:
        """The fused ``(id, score)`` list, best first, from the two ranked id lists (what ``__call__`` orders by)."""
        scores: dict[str, float] = {}
        for weight, ids in ((self.dense_weight, dense_ids), (self.sparse_weight, sparse_ids)):
            for rank, key in enumerate(ids, start=1):
                scores[key] = scores.get(key, 0.0) + weight / (self.k + rank)
        order = sorted(scores, key=lambda key: -scores[key])[:top_k]  # stable: dense-first insertion breaks ties
        return [(key, scores[key]) for key in order]


# ---------------------------------------------------------------------------------------------------- retriever
class Retriever:
    """Dense or hybrid retrieval over one open index version.

    Usage example::

        with VectorIndex(settings).reader() as reader:
            retriever = Retriever(reader, embedder, RetrievalConfig(mode="hybrid", top_k=5))
            chunks = retriever.retrieve("what is the payload of the NR-500?", filters={"tenant": "acme"})
            batches = retriever.retrieve_many(["q1", "q2"])          # one embedder call for both

    In embedded mode the searches run on an in-memory copy of the (immutable) index version,
    :class:`rag.local_search.LocalSearchIndex`, built at :meth:`warm_up` or the first query: same results as
    qdrant-client's local mode, which searches in pure Python (SciFact: a hybrid query ~360 ms there, a few ms here).
    Queries then take no lock. ``local_accelerator=False`` (``RAGOPS_QDRANT__LOCAL_ACCELERATOR=false`` through
    :meth:`rag.engine.RagEngine.open`) keeps every search in qdrant-client; a Qdrant server is always searched as is.

    Args:
        reader: An open index version (``VectorIndex.open_reader``); the retriever does not close it.
        embedder: The index's embedder (its identity must match the one recorded in the index).
        config: Retrieval settings, or a whole stack config (then its collection and embedder are checked too).
        local_accelerator: Search embedded (local-mode) indexes in memory; ignored for a Qdrant server.
    """

    def __init__(
        self,
        reader: IndexReader,
        embedder: QueryEncoder,
        config: RetrievalConfig | StackConfig,
        *,
        local_accelerator: bool = True,
    ) -> None:
        if isinstance(config, StackConfig):
            _check_stack_fits(config, reader)
            config = config.retrieval
        try:
            embedder.identity.check_compatible(reader.version.embedder, what=f"index {reader.collection!r}")
        except EmbedderMismatchError as exc:
            raise StackMismatch(str(exc)) from exc
        self.reader = reader
        self.embedder = embedder
        self.config = config
        self.bm25 = Bm25Encoder(avgdl=reader.version.avgdl)
        # Embedded (local-mode) Qdrant is a plain in-process object without locking: serialise access to it.
        # A server client is thread-safe, so concurrent queries to a server are not serialised.
        local = is_local_client(reader.client)
        self._lock: contextlib.AbstractContextManager[Any] = threading.Lock() if local else contextlib.nullcontext()
        self._store: QdrantVectorStore | None = None
        self._accelerate = local and local_accelerator
        self._memory: LocalSearchIndex | None = None  # built once, then only read (no lock needed to search it)

    @property
    def store(self) -> QdrantVectorStore:
        """The llama-index vector store over the reader's client (built on first use)."""
        if self._store is None:
            from llama_index.vector_stores.qdrant import QdrantVectorStore

            hybrid = self.config.mode == "hybrid"
            self._store = QdrantVectorStore(
                collection_name=self.reader.collection,
                client=self.reader.client,
                dense_vector_name=DENSE_VECTOR,
                sparse_vector_name=SPARSE_VECTOR,
                enable_hybrid=hybrid,
                sparse_query_fn=self._sparse_query if hybrid else None,
                sparse_doc_fn=self._sparse_doc if hybrid else None,
                hybrid_fusion_fn=(
                    WeightedRrf(self.config.rrf_k, self.config.dense_weight, self.config.sparse_weight)
                    if hybrid
                    else None
                ),
            )
        return self._store

    def warm_up(self) -> None:
        """Build the vector store, the in-memory index (embedded mode) and the BM25 analyser now (idempotent)."""
        _ = self.store
        self._in_memory()
        self.bm25.terms("warm up")

    def _in_memory(self) -> LocalSearchIndex | None:
        """The in-memory index of an embedded version (loaded on first use), or None to search through Qdrant."""
        memory = self._memory
        if memory is not None or not self._accelerate:
            return memory
        with self._lock:
            if self._memory is None and self._accelerate:
                _ = self.store  # parse_to_query_result turns hits into nodes; build it under the lock too
                try:
                    self._memory = LocalSearchIndex.load(self.reader.client, self.reader.collection)
                except Exception:  # searching through qdrant-client is slower but still right
                    logger.warning("could not load the index into memory; searching through Qdrant", exc_info=True)
                    self._accelerate = False
            return self._memory

    def _sparse_query(self, texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
        vectors = [self.bm25.encode_query(t) for t in texts]
        return [v.indices for v in vectors], [v.values for v in vectors]

    def _sparse_doc(self, texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
        vectors = [self.bm25.encode_document(t) for t in texts]
        return [v.indices for v in vectors], [v.values for v in vectors]

    # ---------------------------------------------------------------------------------------------------- use
    def retrieve(
        self, question: str, *, filters: Filters | None = None, top_k: int | None = None
    ) -> list[RetrievedChunk]:
        """The best chunks for one question, best first."""
        return self.retrieve_many([question], filters=filters, top_k=top_k)[0]

    def retrieve_many(
        self,
        questions: Sequence[str],
        *,
        filters: Filters | Sequence[Filters | None] | None = None,
        top_k: int | None = None,
    ) -> list[list[RetrievedChunk]]:
        """Retrieve for several questions, embedding them all in one embedder call.

        Args:
            questions: The questions (validated: non-empty, at most ``MAX_QUESTION_CHARS``).
            filters: One filter mapping for all questions, or one (or None) per question.
            top_k: Overrides the configured ``top_k`` (1..candidates).

        Raises:
            BadQuery: A question, filter or ``top_k`` is invalid (nothing is searched then).
            RetrievalError: Qdrant failed.
        """
        if isinstance(questions, str):
            raise BadQuery("questions must be a list of strings, not one string")
        texts = [validate_question(q) for q in questions]
        per_query = self._filters_per_query(filters, len(texts))
        k = self.config.top_k if top_k is None else top_k
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max(self.config.candidates, 100):
            raise BadQuery(f"top_k must be an integer between 1 and {max(self.config.candidates, 100)}, got {k!r}")
        if not texts:
            return []
        vectors = self.embedder.encode(texts)
        scans = self._scan(vectors)
        return [self._search(t, v, f, k, s) for t, v, f, s in zip(texts, vectors, per_query, scans, strict=True)]

    def search(
        self, question: str, vector: np.ndarray, *, top_k: int, filters: Filters | None = None
    ) -> list[RetrievedChunk]:
        """Search with a query vector the caller already computed (evaluation times embedding and search apart).

        ``top_k`` may go up to 1000 here (ranking metrics read deep lists). In hybrid mode the dense and sparse
        lists are ``max(candidates, top_k)`` deep, so ask for ``candidates`` to keep the stack's own fusion.
        """
        text = validate_question(question)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 1000:
            raise BadQuery(f"top_k must be an integer between 1 and 1000, got {top_k!r}")
        return self._search(text, vector, validate_filters(filters), top_k)

    def _filters_per_query(
        self, filters: Filters | Sequence[Filters | None] | None, n: int
    ) -> list[dict[str, list[str]]]:
        if filters is None or isinstance(filters, Mapping):
            shared = validate_filters(filters)
            return [shared] * n
        items = list(filters)
        if len(items) != n:
            raise BadQuery(f"got {len(items)} filter mappings for {n} questions")
        return [validate_filters(f) for f in items]

    def _scan(self, vectors: np.ndarray) -> list[np.ndarray | None]:
        """In memory, a batch's approximate dense scores in one matrix product (the vectors are read once)."""
        memory = self._in_memory()
        if memory is None or len(vectors) < 2:
            return [None] * len(vectors)
        try:
            return list(memory.scan(memory.queries(vectors)))
        except ValueError as exc:
            raise RetrievalError(f"query on {self.reader.collection!r} failed: {exc}") from exc

    def _search(
        self,
        question: str,
        vector: np.ndarray,
        filters: dict[str, list[str]],
        top_k: int,
        scan: np.ndarray | None = None,
    ) -> list[RetrievedChunk]:
        cfg = self.config
        hybrid = cfg.mode == "hybrid" and bool(self.bm25.terms(question))  # all stop words: dense only
        memory = self._in_memory()
        try:
            if memory is not None:
                nodes, scores, dense = self._search_in_memory(memory, question, vector, filters, top_k, hybrid, scan)
            else:
                nodes, scores, dense = self._search_qdrant(question, vector, filters, top_k, hybrid)
        except (ValueError, TypeError, KeyError) as exc:
            raise RetrievalError(f"query on {self.reader.collection!r} failed: {exc}") from exc
        except Exception as exc:  # qdrant-client raises transport-specific errors (grpc, httpx, UnexpectedResponse)
            raise RetrievalError(f"query on {self.reader.collection!r} failed: {type(exc).__name__}: {exc}") from exc
        chunks = [
            _to_chunk(node, float(score), dense.get(node.node_id)) for node, score in zip(nodes, scores, strict=False)
        ]
        if cfg.score_threshold is not None:
            chunks = [c for c in chunks if c.similarity is not None and c.similarity >= cfg.score_threshold]
        return chunks

    def _search_qdrant(
        self, question: str, vector: np.ndarray, filters: dict[str, list[str]], top_k: int, hybrid: bool
    ) -> tuple[list[BaseNode], list[float], dict[str, float]]:
        """Search through llama-index's ``QdrantVectorStore`` (a Qdrant server, or local mode unaccelerated)."""
        from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode

        cfg = self.config
        query = VectorStoreQuery(
            query_embedding=vector.tolist(),
            query_str=question,
            similarity_top_k=max(cfg.candidates, top_k) if hybrid else top_k,
            sparse_top_k=max(cfg.candidates, top_k) if hybrid else None,
            hybrid_top_k=top_k if hybrid else None,
            mode=VectorStoreQueryMode.HYBRID if hybrid else VectorStoreQueryMode.DEFAULT,
            filters=to_metadata_filters(filters),
        )
        with self._lock:
            result = self.store.query(query)
        nodes = list(result.nodes or [])[:top_k]
        scores = [float(s) for s in result.similarities or [0.0] * len(nodes)]
        if hybrid:
            dense: dict[str, float] = dict(getattr(result, "dense_similarities", {}))
            missing = [n.node_id for n in nodes if n.node_id not in dense]
            if missing:
                dense.update(self._similarities(missing, vector))
        else:
            dense = dict(zip((n.node_id for n in nodes), scores, strict=False))
        return nodes, scores, dense

    def _search_in_memory(
        self,
        memory: LocalSearchIndex,
        question: str,
        vector: np.ndarray,
        filters: dict[str, list[str]],
        top_k: int,
        hybrid: bool,
        scan: np.ndarray | None,
    ) -> tuple[list[BaseNode], list[float], dict[str, float]]:
        """The same lists as :meth:`_search_qdrant` on an embedded index, from memory and without the lock.

        Same depths: dense alone is ``top_k`` deep; hybrid fuses a dense and a sparse list each
        ``max(candidates, top_k)`` deep and keeps ``top_k``. Only the returned hits become nodes. ``scan`` is this
        query's row of a batch's :meth:`LocalSearchIndex.scan`, if there was one.
        """
        cfg = self.config
        allowed = memory.filter_mask(filters)
        if not hybrid:
            hits = memory.dense(vector, limit=top_k, allowed=allowed, approx=scan)
            nodes = self._nodes(memory, hits.rows, hits.ids, hits.scores)
            return nodes, list(hits.scores), dict(zip(hits.ids, hits.scores, strict=True))
        depth = max(cfg.candidates, top_k)
        dense_hits = memory.dense(vector, limit=depth, allowed=allowed, approx=scan)
        sparse_query = self.bm25.encode_query(question)
        sparse_hits = memory.sparse(sparse_query.indices, sparse_query.values, limit=depth, allowed=allowed)
        fusion = WeightedRrf(cfg.rrf_k, cfg.dense_weight, cfg.sparse_weight)
        fused = fusion.rank(dense_hits.ids, sparse_hits.ids, top_k)
        dense = dict(zip(dense_hits.ids, dense_hits.scores, strict=True))
        rows = dict(zip(dense_hits.ids, dense_hits.rows, strict=True)) | dict(
            zip(sparse_hits.ids, sparse_hits.rows, strict=True)
        )
        ids = [key for key, _ in fused]
        scores = [score for _, score in fused]
        missing = [key for key in ids if key not in dense]
        if missing:
            dense.update(memory.similarities(missing, vector))
        return self._nodes(memory, [rows[key] for key in ids], ids, scores), scores, dense

    def _nodes(
        self, memory: LocalSearchIndex, rows: Sequence[int], ids: Sequence[str], scores: Sequence[float]
    ) -> list[BaseNode]:
        """llama-index nodes of hits, made by ``QdrantVectorStore.parse_to_query_result`` as for Qdrant's points."""
        points = [_Point(id=i, score=s, payload=memory.payload(r)) for r, i, s in zip(rows, ids, scores, strict=True)]
        return list(self.store.parse_to_query_result(points).nodes or [])

    def _similarities(self, ids: list[str], vector: np.ndarray) -> dict[str, float]:
        """Dense cosine similarity of points the dense search did not return (sparse-only hybrid hits)."""
        try:
            with self._lock:
                records = self.reader.client.retrieve(
                    self.reader.collection, ids=ids, with_vectors=[DENSE_VECTOR], with_payload=False
                )
        except Exception:  # a missing similarity only weakens the answerer's support estimate
            logger.warning("could not fetch dense vectors for hybrid hits", exc_info=True)
            return {}
        out: dict[str, float] = {}
        for record in records:
            stored = record.vector.get(DENSE_VECTOR) if isinstance(record.vector, dict) else None
            if stored is not None:
                other = np.asarray(stored, dtype=np.float32)
                norm = float(np.linalg.norm(other)) or 1.0
                out[str(record.id)] = float(np.dot(vector, other) / norm)
        return out


@dataclass(frozen=True)
class _Point:
    """What ``parse_to_query_result`` reads of a Qdrant ``ScoredPoint``."""

    id: str
    score: float
    payload: dict[str, Any]
    vector: None = None


def _to_chunk(node: BaseNode, score: float, similarity: float | None) -> RetrievedChunk:
    from llama_index.core.schema import MetadataMode

    meta = dict(node.metadata)
    tenant = meta.get("tenant")
    return RetrievedChunk(
        chunk_id=node.node_id,
        doc_id=str(node.ref_doc_id or meta.get("doc_id") or ""),
        title=str(meta.get("title") or ""),
        source=str(meta.get("source") or ""),
        position=int(meta.get("position") or 0),
        text=node.get_content(metadata_mode=MetadataMode.NONE),
        score=score,
        similarity=similarity,
        tenant=str(tenant) if tenant is not None else None,
        metadata={k: v for k, v in meta.items() if k not in ("title", "source", "position", "tenant", "doc_hash")},
    )


def _check_stack_fits(config: StackConfig, reader: IndexReader) -> None:
    """A stack may only read the collection, version, embedder and chunking it was registered for."""
    version = reader.version
    if config.collection != version.collection:
        raise StackMismatch(f"stack {config.name!r} reads collection {config.collection!r}, not {version.collection!r}")
    if config.index_version is not None and config.index_version != version.version:
        raise StackMismatch(
            f"stack {config.name!r} is pinned to index version {config.index_version}, the reader has {version.version}"
        )
    if not config.embedder.matches(version.embedder):
        raise StackMismatch(
            f"stack {config.name!r} embeds with {config.embedder.name} ({config.embedder.weights_sha256[:12]}) but "
            f"index {version.collection!r} v{version.version} was built with {version.embedder.name} "
            f"({version.embedder.weights_sha256[:12]})"
        )
    recorded = {"splitter", "chunk_size", "chunk_overlap", "tokenizer"}
    params = {k: getattr(version.chunking, k) for k in recorded}
    if config.chunking.model_dump() != params:
        raise StackMismatch(
            f"stack {config.name!r} expects chunking {config.chunking.model_dump()}, the index has {params}"
        )
