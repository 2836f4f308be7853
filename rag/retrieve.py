"""Retrieval over a published index version: dense, or hybrid (dense + BM25 fused by weighted RRF).

- **Dense** (default): the question is embedded with the index's own embedder and matched against ``text-dense``
  (cosine) inside the Qdrant engine (:class:`pipelines.index.IndexReader`: the engine in process, or a server).
- **Hybrid**: the same dense search plus a BM25 search of ``text-sparse`` (the query side of
  :class:`pipelines.sparse.Bm25Encoder`; the engine applies the IDF of the version's own points), fused by weighted
  reciprocal rank (``sum(weight / (rrf_k + rank))``) here rather than by the engine's RRF: the answerer needs each
  hit's dense cosine similarity, which an engine-fused list does not carry, and the fusion costs microseconds.

Filters (``tenant``, ``source``, ``doc_id``, ``acl``; any-of per key, AND across keys; ``acl`` also admits chunks
that carry no acl), ANDed with the asking principal's :class:`rag.access.AccessScope`, become a
:class:`pipelines.store.PointFilter` applied inside the engine's search, so top-k is filled with permitted chunks
only. Hits become llama-index ``TextNode``s through llama-index's own
``metadata_dict_to_node`` (the payload is llama-index's node layout), then :class:`RetrievedChunk`s. We call the
store directly instead of through a llama-index ``VectorStore``: llama-index's ``QdrantVectorStore`` needs a
qdrant-client (the embedded engine is not one), and an adapter layer would only copy the same lists around.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipelines.embed import EmbedderIdentity
from pipelines.errors import EmbedderMismatchError, IndexError_
from pipelines.sparse import Bm25Encoder
from pipelines.store import Hit, PointFilter
from rag.access import UNRESTRICTED, AccessScope
from rag.errors import BadQuery, RetrievalError, StackMismatch
from rag.types import FILTER_KEYS, Filters, RetrievalConfig, RetrievedChunk, StackConfig

if TYPE_CHECKING:
    from llama_index.core.schema import BaseNode
    from llama_index.core.vector_stores.types import MetadataFilters, VectorStoreQueryResult

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
OR_MISSING_KEYS = ("acl",)
"""Filter keys that also admit chunks without the key (no acl: visible to every principal)."""


def to_point_filter(filters: Mapping[str, Sequence[str]]) -> PointFilter | None:
    """The engine-side filter of validated filters (None when there are none)."""
    return PointFilter.of(filters, or_missing=OR_MISSING_KEYS) if filters else None


class Retriever:
    """Dense or hybrid retrieval over one open index version.

    Usage example::

        with VectorIndex(settings).reader() as reader:
            retriever = Retriever(reader, embedder, RetrievalConfig(mode="hybrid", top_k=5))
            chunks = retriever.retrieve("what is the payload of the NR-500?", filters={"tenant": "acme"})
            batches = retriever.retrieve_many(["q1", "q2"])          # one embedder call for both
            vectors = embedder.encode(["q1"])                         # e.g. embedded once for guardrails too
            same = retriever.search_many(["q1"], vectors)

    Searches take no lock: the engine (in process or a server) is safe to query from several threads.

    Args:
        reader: An open index version (``VectorIndex.open_reader``); the retriever does not close it.
        embedder: The index's embedder (its identity must match the one recorded in the index).
        config: Retrieval settings, or a whole stack config (then its collection and embedder are checked too).
    """

    def __init__(self, reader: IndexReader, embedder: QueryEncoder, config: RetrievalConfig | StackConfig) -> None:
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
        self.fusion = WeightedRrf(config.rrf_k, config.dense_weight, config.sparse_weight)

    def warm_up(self) -> None:
        """Load the BM25 analyser and touch the index once (idempotent)."""
        self.bm25.terms("warm up")
        with contextlib.suppress(Exception):
            self.reader.count()

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
            RetrievalError: The index failed.
        """
        texts, per_query, k = self._validate(questions, filters, top_k)
        if not texts:
            return []
        vectors = self.embedder.encode(texts)
        return [self._search(t, v, f, k) for t, v, f in zip(texts, vectors, per_query, strict=True)]

    def search_many(
        self,
        questions: Sequence[str],
        vectors: np.ndarray,
        *,
        filters: Filters | Sequence[Filters | None] | None = None,
        top_k: int | None = None,
    ) -> list[list[RetrievedChunk]]:
        """:meth:`retrieve_many` with query vectors the caller computed (one row per question, the index's
        embedder): the query service embeds once and reuses the vector for guardrails and retrieval."""
        texts, per_query, k = self._validate(questions, filters, top_k)
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape != (len(texts), self.reader.version.embedder.dim):
            raise BadQuery(
                f"vectors must have shape ({len(texts)}, {self.reader.version.embedder.dim}), got {matrix.shape}"
            )
        return [self._search(t, v, f, k) for t, v, f in zip(texts, matrix, per_query, strict=True)]

    def search(
        self,
        question: str,
        vector: np.ndarray,
        *,
        top_k: int,
        filters: Filters | None = None,
        scope: AccessScope = UNRESTRICTED,
    ) -> list[RetrievedChunk]:
        """Search with a query vector the caller already computed (evaluation times embedding and search apart).

        ``top_k`` may go up to 1000 here (ranking metrics read deep lists). In hybrid mode the dense and sparse
        lists are ``max(candidates, top_k)`` deep, so ask for ``candidates`` to keep the stack's own fusion.
        ``scope`` is what the asking principal may see (:mod:`rag.access`), applied inside the engine's search.
        """
        text = validate_question(question)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 1000:
            raise BadQuery(f"top_k must be an integer between 1 and 1000, got {top_k!r}")
        return self._search(text, vector, validate_filters(filters), top_k, scope)

    def _validate(
        self, questions: Sequence[str], filters: Filters | Sequence[Filters | None] | None, top_k: int | None
    ) -> tuple[list[str], list[dict[str, list[str]]], int]:
        if isinstance(questions, str):
            raise BadQuery("questions must be a list of strings, not one string")
        texts = [validate_question(q) for q in questions]
        per_query = self._filters_per_query(filters, len(texts))
        k = self.config.top_k if top_k is None else top_k
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max(self.config.candidates, 100):
            raise BadQuery(f"top_k must be an integer between 1 and {max(self.config.candidates, 100)}, got {k!r}")
        return texts, per_query, k

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

    def _search(
        self,
        question: str,
        vector: np.ndarray,
        filters: dict[str, list[str]],
        top_k: int,
        scope: AccessScope = UNRESTRICTED,
    ) -> list[RetrievedChunk]:
        cfg = self.config
        hybrid = cfg.mode == "hybrid" and bool(self.bm25.terms(question))  # all stop words: dense only
        flt = scope.narrow(to_point_filter(filters))
        try:
            if hybrid:
                hits, dense = self._hybrid(question, vector, flt, top_k)
            else:
                hits = self.reader.search_dense(vector, limit=top_k, flt=flt, payload=True)
                dense = {h.id: h.score for h in hits}
        except IndexError_ as exc:
            raise RetrievalError(f"query on {self.reader.collection!r} failed: {exc}") from exc
        except Exception as exc:  # the engine and qdrant-client raise their own errors (transport, RuntimeError)
            raise RetrievalError(f"query on {self.reader.collection!r} failed: {type(exc).__name__}: {exc}") from exc
        chunks = [_to_chunk(_node(h), h.score, dense.get(h.id)) for h in hits]
        if cfg.score_threshold is not None:
            chunks = [c for c in chunks if c.similarity is not None and c.similarity >= cfg.score_threshold]
        return chunks

    def _hybrid(
        self, question: str, vector: np.ndarray, flt: PointFilter | None, top_k: int
    ) -> tuple[list[Hit], dict[str, float]]:
        """Dense and BM25 lists each ``max(candidates, top_k)`` deep, fused here; payloads of the fused top only."""
        depth = max(self.config.candidates, top_k)
        dense_hits = self.reader.search_dense(vector, limit=depth, flt=flt)
        sparse_hits = self.reader.search_sparse(self.bm25.encode_query(question), limit=depth, flt=flt)
        fused = self.fusion.rank([h.id for h in dense_hits], [h.id for h in sparse_hits], top_k)
        dense = {h.id: h.score for h in dense_hits}
        missing = [key for key, _ in fused if key not in dense]
        points = {p.id: p for p in self.reader.retrieve([key for key, _ in fused], dense=bool(missing))}
        query = np.asarray(vector, dtype=np.float32)
        for key in missing:  # sparse-only hits: their dense cosine similarity, for the answerer's support estimate
            stored = points[key].dense if key in points else None
            if stored is not None:
                dense[key] = float(np.dot(query, stored) / (float(np.linalg.norm(stored)) or 1.0))
        hits = [Hit(key, score, points[key].payload) for key, score in fused if key in points]
        return hits, dense


def _node(hit: Hit) -> BaseNode:
    """The llama-index node stored in a hit's payload (``point_payload`` wrote llama-index's own layout)."""
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    return metadata_dict_to_node(dict(hit.payload or {}))


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
