"""In-memory search over one embedded index version: what qdrant-client's local mode computes, without its loops.

Why: qdrant-client's local mode (the embedded store) searches by brute force in pure Python. On SciFact (12,685
chunks) a BM25 search loops a Python merge-join over every point (~320 ms a query) and a dense search spends most
of its ~30 ms deep-copying payloads and building result models. A Qdrant server (HNSW, native sparse index) needs
none of this and does not use it.

Why it is safe: an embedded index version is immutable once published, and a reader searches its own private copy
of it (``pipelines.index``), so the points can be loaded once (``client.scroll``) and searched with numpy. The
object is read-only after :meth:`LocalSearchIndex.load`, so any number of threads may search it at once without a
lock (numpy's matrix products release the GIL).

"The same results" is meant literally, and each part reproduces qdrant-client 1.20's local-mode arithmetic:

- **Dense** (cosine): Qdrant normalises the stored vectors and the query in float64 and ranks by their float64 dot
  product. We scan a float32 copy (half the memory traffic of a float64 scan) and rescore in float64, as Qdrant
  computes it, every allowed point whose float32 score is within twice a proven rounding bound of the k-th best
  float32 score, so no point of Qdrant's top k can be missed and the returned scores are Qdrant's (to ~1e-15: only
  the order of the float64 additions differs).
- **Sparse** (dot product with ``Modifier.IDF``): Qdrant rescales each query weight by
  ``ln((N - df + 0.5) / (df + 0.5) + 1)``, where ``N`` is the number of live points that have the sparse vector and
  ``df`` the number of them containing the term, counted over the whole collection at query time (filters do not
  narrow it); it then sums ``query * stored`` in float64 in ascending term order, casts to float32, and drops points
  that share no term with the query. We keep the postings per term (an inverted index) and accumulate with
  ``np.bincount`` in the same order, so the float32 scores are bit-identical.
- **Filters** (``tenant``/``source``/``doc_id``; AND over keys, any-of within a key): a payload value matches when
  it is a string equal to a filter value, or a list holding one (Qdrant's ``MatchValue``/``MatchAny`` semantics on
  keyword values); a point without the key never matches.
- **Ties**: Qdrant ranks by ``np.argsort(scores)[::-1]`` over all points in its internal (storage) order, so exactly
  equal scores come out in an order only that sort defines. BM25 ties are common (SciFact: 4,523 groups of equal
  scores in the top 300 of 300 queries), and through the rank fusion they would move hybrid results. So when the
  client's internal order is readable (a private attribute of qdrant-client's local mode, checked for consistency at
  load), the rows are kept in that order and the sparse ranking replays that very sort on the bit-identical score
  array: identical lists, ties included. Otherwise sparse ties, and always dense ones (they need identical vectors),
  are ordered by row: internal order, or point id (the order of ``scroll``) when that was not readable.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.index import DENSE_VECTOR, SPARSE_VECTOR
from rag.types import FILTER_KEYS

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

logger = logging.getLogger(__name__)

_SCROLL_PAGE = 2048
_QDRANT_EPSILON = 1.1920929e-7
"""What qdrant-client's local mode divides by instead of a zero norm (``qdrant_client.local.distances.EPSILON``)."""


@dataclass(frozen=True)
class LocalHits:
    """One ranked result list: rows into the index's points, their ids and scores, best first."""

    rows: tuple[int, ...]
    ids: tuple[str, ...]
    scores: tuple[float, ...]


_EMPTY = LocalHits((), (), ())


def is_local_client(client: object) -> bool:
    """Whether ``client`` is a ``QdrantClient`` in local (embedded) mode."""
    return type(getattr(client, "_client", None)).__name__ == "QdrantLocal"


def _rss_bytes() -> int | None:
    """Resident memory of this process (Linux), for the load log; None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _internal_order(client: object, collection: str, ids: Sequence[str]) -> np.ndarray | None:
    """Positions in ``ids`` (scroll order) of qdrant-client local mode's internal point order, or None.

    Reads private attributes (``QdrantLocal.collections[...].ids_inv``); any surprise (another client, a release
    that moved them, deleted points still holding slots, ids that differ) returns None and ties go by point id.
    """
    try:
        stored = getattr(client, "_client").collections[collection]  # noqa: B009 - private, see docstring
        internal = [str(point_id) for point_id in stored.ids_inv]
        deleted = bool(np.asarray(stored.deleted, dtype=bool).any())
    except (AttributeError, KeyError, TypeError):
        return None
    if deleted or len(internal) != len(ids):
        return None
    position = {point_id: row for row, point_id in enumerate(ids)}
    order = [position.get(point_id, -1) for point_id in internal]
    if -1 in order or len(set(order)) != len(order):
        return None
    return np.asarray(order, dtype=np.int64)


def _keyword_values(value: Any) -> Iterable[str]:
    """The payload values a keyword filter can match: a string, or the strings of a list (one level, as Qdrant)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return (v for v in value if isinstance(v, str))
    return ()


def _best(rows: np.ndarray, scores: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``limit`` best ``rows`` by score, ties by row; ``rows`` must be ascending."""
    if rows.size > limit:
        kth = np.partition(scores, rows.size - limit)[rows.size - limit]
        keep = scores >= kth  # every tie at the cut stays, so the tie order below decides who makes it
        rows, scores = rows[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")[:limit]
    return rows[order], scores[order]


class LocalSearchIndex:
    """The points of one immutable index version in numpy arrays; read-only after :meth:`load`.

    Usage example::

        index = LocalSearchIndex.load(reader.client, reader.collection)
        allowed = index.filter_mask({"tenant": ["acme"]})
        hits = index.dense(query_vector, limit=5, allowed=allowed)
        payloads = [index.payload(row) for row in hits.rows]
    """

    def __init__(
        self,
        *,
        ids: Sequence[str],
        payloads: Sequence[dict[str, Any]],
        dense: np.ndarray,
        has_dense: np.ndarray,
        sparse_rows: np.ndarray,
        sparse_terms: np.ndarray,
        sparse_values: np.ndarray,
        has_sparse: np.ndarray,
        filter_keys: Iterable[str] = FILTER_KEYS,
        qdrant_order: bool = False,
    ) -> None:
        """Build from parallel per-point data (normally through :meth:`load`).

        Args:
            ids: Point ids; row ``i`` of every array belongs to ``ids[i]``.
            payloads: Full payloads (kept, never modified: the retriever turns hits into nodes from them).
            dense: ``(points, dim)`` stored dense vectors (rows without one are ignored via ``has_dense``).
            has_dense, has_sparse: Which points have each vector (Qdrant leaves the others out of that search).
            sparse_rows, sparse_terms, sparse_values: One entry per stored (point, term, weight) of the sparse vectors.
            filter_keys: Payload keys that :meth:`filter_mask` accepts.
            qdrant_order: The rows are in qdrant-client's internal order, so sparse rankings replay its sort (ties
                included); otherwise ties are ordered by row.
        """
        n = len(ids)
        self.ids: tuple[str, ...] = tuple(ids)
        self._id_array = np.asarray(self.ids, dtype=object)
        self._row_of = {point_id: row for row, point_id in enumerate(self.ids)}
        self._payloads = tuple(payloads)
        # Qdrant's cosine: stored vectors divided by their float64 norm (already unit length to float32 precision,
        # as the embedder normalises; this makes them so in float64 too, as Qdrant does before every search).
        dense64 = np.asarray(dense, dtype=np.float64)
        if dense64.ndim != 2 or dense64.shape[0] != n:
            raise ValueError(f"dense vectors must be a ({n}, dim) matrix, got shape {dense64.shape}")
        norms = np.linalg.norm(dense64, axis=-1)[:, np.newaxis]
        self._dense64 = dense64 / np.where(norms != 0.0, norms, _QDRANT_EPSILON)
        self._dense32 = self._dense64.astype(np.float32)
        self.dim = int(self._dense64.shape[1])
        # |float32 score - float64 score| <= (dim + 1) * u for unit vectors (rounding of both operands and of the
        # sum; u = eps/2); a point of the true top k is at most twice that below the k-th float32 score. 2x margin.
        self._margin = 2.0 * (self.dim + 2) * float(np.finfo(np.float32).eps)
        self._has_dense = np.asarray(has_dense, dtype=bool)
        self._dense_rows = np.flatnonzero(self._has_dense)
        self._has_sparse = np.asarray(has_sparse, dtype=bool)
        self.qdrant_order = qdrant_order
        self._sparse_docs = int(np.count_nonzero(self._has_sparse))
        # Postings by term (ascending term id), rows ascending within a term: an inverted index.
        rows = np.asarray(sparse_rows, dtype=np.int64)
        terms = np.asarray(sparse_terms, dtype=np.int64)
        values = np.asarray(sparse_values, dtype=np.float64)
        order = np.lexsort((rows, terms))
        rows, terms, values = rows[order], terms[order], values[order]
        if rows.size > 1 and bool(np.any((np.diff(terms) == 0) & (np.diff(rows) == 0))):
            raise ValueError("a stored sparse vector repeats a term; Qdrant's scoring of that is not reproduced")
        self._terms, starts, counts = np.unique(terms, return_index=True, return_counts=True)
        self._term_start = starts.astype(np.int64)
        self._term_df = counts.astype(np.int64)
        self._post_rows = rows.astype(np.int32 if n < 2**31 else np.int64)
        self._post_values = values
        # Filters: per key, value -> rows holding it.
        index: dict[str, dict[str, np.ndarray]] = {}
        for key in filter_keys:
            lists: dict[str, list[int]] = {}
            for row, payload in enumerate(self._payloads):
                for value in _keyword_values(payload.get(key)):
                    lists.setdefault(value, []).append(row)
            index[key] = {value: np.unique(np.asarray(r, dtype=np.int64)) for value, r in lists.items()}
        self._keyword_rows = index

    # ---------------------------------------------------------------------------------------------- building
    @classmethod
    def load(
        cls,
        client: QdrantClient,
        collection: str,
        *,
        filter_keys: Iterable[str] = FILTER_KEYS,
        page_size: int = _SCROLL_PAGE,
    ) -> LocalSearchIndex:
        """Read every point of ``collection`` (vectors and payload) through ``client.scroll``, in pages.

        The caller must hold whatever lock guards ``client`` (local mode is not thread-safe).
        """
        started = time.perf_counter()
        rss_before = _rss_bytes()
        ids: list[str] = []
        payloads: list[dict[str, Any]] = []
        has_sparse: list[bool] = []
        # Converted to numpy page by page: 12.7k vectors as Python float lists would take ~150 MB at once.
        dense_rows: list[np.ndarray] = []
        dense_pages: list[np.ndarray] = []
        sparse_pages: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        offset: Any = None
        while True:
            records, offset = client.scroll(
                collection,
                limit=page_size,
                offset=offset,
                with_payload=True,
                with_vectors=[DENSE_VECTOR, SPARSE_VECTOR],
            )
            page_rows: list[int] = []
            page_dense: list[Any] = []
            rows: list[int] = []
            terms: list[int] = []
            values: list[float] = []
            for record in records:
                row = len(ids)
                ids.append(str(record.id))
                payloads.append(dict(record.payload or {}))
                vectors = record.vector if isinstance(record.vector, dict) else {}
                stored = vectors.get(DENSE_VECTOR)
                if isinstance(stored, list):
                    page_rows.append(row)
                    page_dense.append(stored)
                sparse = vectors.get(SPARSE_VECTOR)
                has_sparse.append(sparse is not None)
                if sparse is not None:
                    indices = list(getattr(sparse, "indices", []))
                    rows.extend([row] * len(indices))
                    terms.extend(indices)
                    values.extend(getattr(sparse, "values", []))
            if page_dense:
                dense_rows.append(np.asarray(page_rows, dtype=np.int64))
                dense_pages.append(np.asarray(page_dense, dtype=np.float64))
            sparse_pages.append(
                (
                    np.asarray(rows, dtype=np.int64),
                    np.asarray(terms, dtype=np.int64),
                    np.asarray(values, dtype=np.float64),
                )
            )
            del records, page_dense
            if offset is None:
                break
        n = len(ids)
        dim = dense_pages[0].shape[1] if dense_pages else 0
        matrix = np.zeros((n, dim), dtype=np.float64)
        has_dense = np.zeros(n, dtype=bool)
        for page_rows_array, page in zip(dense_rows, dense_pages, strict=True):
            matrix[page_rows_array] = page
            has_dense[page_rows_array] = True
        del dense_pages
        sparse_rows = np.concatenate([p[0] for p in sparse_pages]) if sparse_pages else np.zeros(0, np.int64)
        sparse_terms = np.concatenate([p[1] for p in sparse_pages]) if sparse_pages else np.zeros(0, np.int64)
        sparse_values = np.concatenate([p[2] for p in sparse_pages]) if sparse_pages else np.zeros(0, np.float64)
        sparse_flags = np.asarray(has_sparse, dtype=bool)
        order = _internal_order(client, collection, ids)
        if order is not None:  # rows in Qdrant's own order, so that its tie order can be replayed
            ids = [ids[i] for i in order]
            payloads = [payloads[i] for i in order]
            matrix, has_dense, sparse_flags = matrix[order], has_dense[order], sparse_flags[order]
            new_row = np.empty(n, dtype=np.int64)
            new_row[order] = np.arange(n)
            sparse_rows = new_row[sparse_rows]
        built = cls(
            ids=ids,
            payloads=payloads,
            dense=matrix,
            has_dense=has_dense,
            sparse_rows=sparse_rows,
            sparse_terms=sparse_terms,
            sparse_values=sparse_values,
            has_sparse=sparse_flags,
            filter_keys=filter_keys,
            qdrant_order=order is not None,
        )
        rss_after = _rss_bytes()
        logger.info(
            "loaded embedded index version into memory for fast local search",
            extra={
                "collection": collection,
                "points": built.points,
                "qdrant_order": built.qdrant_order,
                "seconds": round(time.perf_counter() - started, 3),
                "array_mb": round(built.array_bytes / 2**20, 1),
                "rss_growth_mb": (
                    round((rss_after - rss_before) / 2**20, 1)
                    if rss_before is not None and rss_after is not None
                    else None
                ),
            },
        )
        return built

    @property
    def points(self) -> int:
        """Points held."""
        return len(self.ids)

    @property
    def array_bytes(self) -> int:
        """Bytes held in numpy arrays (vectors, postings, filter rows); payloads are shared with the client."""
        arrays: list[np.ndarray] = [
            self._dense64,
            self._dense32,
            self._has_dense,
            self._dense_rows,
            self._has_sparse,
            self._terms,
            self._term_start,
            self._term_df,
            self._post_rows,
            self._post_values,
        ]
        keyword = sum(rows.nbytes for values in self._keyword_rows.values() for rows in values.values())
        return int(sum(a.nbytes for a in arrays)) + keyword

    # ---------------------------------------------------------------------------------------------- reading
    def payload(self, row: int) -> dict[str, Any]:
        """The stored payload of a point (shared: do not modify)."""
        return self._payloads[row]

    def filter_mask(self, filters: Mapping[str, Sequence[str]]) -> np.ndarray | None:
        """Points passing ``filters`` (AND over keys, any-of within a key); None when there are no filters."""
        if not filters:
            return None
        mask = np.ones(self.points, dtype=bool)
        for key, values in filters.items():
            if key not in self._keyword_rows:
                raise ValueError(f"filter key {key!r} is not indexed in memory")
            held = self._keyword_rows[key]
            key_mask = np.zeros(self.points, dtype=bool)
            for value in values:
                rows = held.get(value)
                if rows is not None:
                    key_mask[rows] = True
            mask &= key_mask
        return mask

    def queries(self, vectors: np.ndarray) -> np.ndarray:
        """Query vectors as Qdrant uses them for cosine: float64, divided by their norm; one row per query."""
        queries = np.asarray(vectors, dtype=np.float64)
        queries = queries.reshape(1, -1) if queries.ndim == 1 else queries
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"query vectors have dimension {queries.shape[-1]}, the index has {self.dim}")
        if np.isnan(queries).any():
            raise ValueError("Query vector must not contain NaN")
        norms = np.linalg.norm(queries, axis=1)[:, np.newaxis]
        return queries / np.where(norms != 0.0, norms, _QDRANT_EPSILON)

    def scan(self, queries: np.ndarray) -> np.ndarray:
        """Approximate (float32) cosines of :meth:`queries` rows against every point: ``(queries, points)``.

        One BLAS matrix product for a batch reads the vectors once, however many queries it holds (8 queries:
        ~2 ms, against ~1 ms for each query alone).
        """
        queries = np.asarray(queries, dtype=np.float32)
        if self.points == 0:
            return np.zeros((queries.shape[0], 0), dtype=np.float32)
        return queries @ self._dense32.T

    def dense(
        self,
        vector: np.ndarray,
        *,
        limit: int,
        allowed: np.ndarray | None = None,
        approx: np.ndarray | None = None,
    ) -> LocalHits:
        """The ``limit`` best points by cosine similarity (Qdrant's float64 scores), among ``allowed`` ones.

        Args:
            vector: The query vector (any scale; normalised as Qdrant does).
            limit: How many hits at most.
            allowed: Points that may be returned (:meth:`filter_mask`); None means all.
            approx: This query's row of :meth:`scan` when a batch was scanned at once; computed when None.
        """
        if self.points == 0 or limit < 1:
            return _EMPTY  # an empty collection answers nothing, whatever the query
        query = self.queries(vector)[0]
        rows = self._dense_rows if allowed is None else np.flatnonzero(allowed & self._has_dense)
        if rows.size == 0:
            return _EMPTY
        if approx is None:
            # numpy's own loop (GIL released), not BLAS: a multithreaded gemv stalls for milliseconds waiting for
            # a helper thread when the other core is busy (measured 6-8 ms instead of ~1 ms on this machine).
            scores = np.einsum("ij,j->i", self._dense32, query.astype(np.float32))
        else:
            scores = np.asarray(approx).reshape(-1)
        if scores.shape[0] != self.points:
            raise ValueError(f"approximate scores cover {scores.shape[0]} points, the index has {self.points}")
        if rows.size != self.points:  # a subset (filters, or points without a dense vector)
            scores = scores[rows]
        if rows.size > limit:
            kth = np.partition(scores, rows.size - limit)[rows.size - limit]
            rows = rows[scores >= kth - self._margin]
        exact = np.einsum("ij,j->i", self._dense64[rows], query)  # Qdrant's float64 cosine, for the finalists
        best_rows, best_scores = _best(rows, exact, limit)
        return self._hits(best_rows, best_scores)

    def sparse(
        self, indices: Sequence[int], values: Sequence[float], *, limit: int, allowed: np.ndarray | None = None
    ) -> LocalHits:
        """The ``limit`` best points by IDF-weighted dot product (Qdrant's float32 scores), among ``allowed`` ones.

        Points that share no term with the query are not returned (Qdrant scores them -inf and skips them).
        """
        if len(indices) != len(values):  # Qdrant's validate_sparse_vector, so both paths refuse the same queries
            raise ValueError("Indices and values must have the same length")
        if len(set(indices)) != len(indices):
            raise ValueError("Indices must be unique")
        pairs = sorted(zip((int(i) for i in indices), (float(v) for v in values), strict=True))
        if any(math.isnan(v) for _, v in pairs):
            raise ValueError("Values must not contain NaN")
        if limit < 1 or not pairs:
            return _EMPTY
        terms = np.asarray([i for i, _ in pairs], dtype=np.int64)
        found = np.searchsorted(self._terms, terms)
        row_parts: list[np.ndarray] = []
        value_parts: list[np.ndarray] = []
        n = self._sparse_docs
        for (term, value), at in zip(pairs, found.tolist(), strict=True):
            if at >= self._terms.size or int(self._terms[at]) != term:
                continue  # df 0: no point holds the term, it adds nothing
            df = int(self._term_df[at])
            weight = value * math.log((n - df + 0.5) / (df + 0.5) + 1)  # Qdrant's _rescore_idf, in Python floats
            start = int(self._term_start[at])
            row_parts.append(self._post_rows[start : start + df])
            value_parts.append(self._post_values[start : start + df] * weight)
        if not row_parts:
            return _EMPTY
        rows = np.concatenate(row_parts)
        # Per point, bincount adds the products in the order given, ascending term: Qdrant's float64 sum, exactly.
        sums = np.bincount(rows, weights=np.concatenate(value_parts), minlength=self.points)
        overlap = np.zeros(self.points, dtype=bool)
        overlap[rows] = True
        if self.qdrant_order:
            # Qdrant's score array (float32, -inf where no term is shared) and Qdrant's sort of it: same tie order.
            scores = np.where(overlap, sums, -np.inf).astype(np.float32)
            ranked = np.argsort(scores)[::-1]
            keep = overlap[ranked] & self._has_sparse[ranked]
            if allowed is not None:
                keep &= allowed[ranked]
            best = ranked[keep][:limit]
            return self._hits(best, scores[best])
        if allowed is not None:
            overlap &= allowed
        candidates = np.flatnonzero(overlap & self._has_sparse)
        if candidates.size == 0:
            return _EMPTY
        best_rows, best_scores = _best(candidates, sums[candidates].astype(np.float32), limit)
        return self._hits(best_rows, best_scores)

    def similarities(self, ids: Iterable[str], vector: np.ndarray) -> dict[str, float]:
        """Dense cosine similarity of the query to points by id (the retriever's formula for sparse-only hits)."""
        out: dict[str, float] = {}
        for point_id in ids:
            row = self._row_of.get(point_id)
            if row is None or not self._has_dense[row]:
                continue
            other = self._dense32[row]
            norm = float(np.linalg.norm(other)) or 1.0
            out[point_id] = float(np.dot(vector, other) / norm)
        return out

    def _hits(self, rows: np.ndarray, scores: np.ndarray) -> LocalHits:
        return LocalHits(
            rows=tuple(rows.tolist()),
            ids=tuple(self._id_array[rows].tolist()),
            scores=tuple(scores.astype(np.float64).tolist()),
        )
