"""The answer cache: repeats and paraphrases answered without retrieval or generation, never across scopes.

Two layers, both keyed by the request's *scope*: what the principal may see (its :class:`rag.access.AccessScope`:
tenant or every tenant, access groups or every group; an admin and a reader without tenant both have no tenant but
see different documents), the request's own filters and ``top_k`` (a filtered question must not get an unfiltered
answer). An exact layer answers a repeat of the same
normalised question text before anything is embedded; a semantic layer answers a question whose embedding (the one
retrieval computes anyway) is within ``threshold`` cosine of a stored one.

One cache belongs to one served stack version over one index version (the service builds a chain per pair), so a
promotion, a rollback or a newly published index starts from an empty cache: a stale answer cannot be served.
Entries expire after ``ttl_s``; past ``max_entries`` the least recently used entry of the scope whose oldest
entry is oldest goes first. Only answers that passed
every check are stored; a refused question is never cached.
"""

from __future__ import annotations

import json
import re
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from rag.access import AccessScope
from rag.types import Answer, RetrievedChunk

_SPACE = re.compile(r"\s+")


def normalise(question: str) -> str:
    """The exact layer's key: NFKC, case-folded, whitespace collapsed, trailing punctuation dropped."""
    text = _SPACE.sub(" ", unicodedata.normalize("NFKC", question).casefold()).strip()
    return text.rstrip("?!. ")


def unit_vector(vector: np.ndarray) -> np.ndarray:
    """``vector`` as float32 scaled to length 1 (cosine is then a dot product)."""
    unit = np.asarray(vector, dtype=np.float32)
    return unit / (np.linalg.norm(unit) or 1.0)


def scope_key(access: AccessScope, filters: Mapping[str, Sequence[str]] | None, top_k: int) -> str:
    """Everything besides the question that decides which chunks an answer may come from."""
    return json.dumps(
        {
            "t": access.tenant,
            "ta": access.all_tenants,
            "g": sorted(access.groups),
            "ga": access.all_groups,
            "f": {k: sorted(v) for k, v in sorted((filters or {}).items())},
            "k": top_k,
        },
        separators=(",", ":"),
    )


@dataclass(frozen=True)
class CachedAnswer:
    """A stored answer with the chunks it was made from (its citations point into them)."""

    question: str
    answer: Answer
    chunks: tuple[RetrievedChunk, ...]
    stored_at: float


class CacheBackend(Protocol):
    """What the cache stages need: :class:`AnswerCache` in process, :class:`rag.cache_redis.RedisAnswerCache`
    shared by workers."""

    threshold: float

    @property
    def degraded(self) -> bool:
        """True while the cache's store is unreachable (lookups miss, nothing is stored)."""
        ...

    def exact(self, scope: str, question: str) -> CachedAnswer | None:
        """The entry for this normalised question in ``scope``, if fresh."""
        ...

    def similar(self, scope: str, vector: np.ndarray) -> tuple[CachedAnswer, float] | None:
        """The closest entry within the threshold, with its cosine."""
        ...

    def put(self, scope: str, question: str, vector: np.ndarray | None, entry: CachedAnswer) -> None:
        """Store an answer."""
        ...

    def clear(self) -> None:
        """Forget everything."""
        ...


class Vectors:
    """A scope's unit vectors in one preallocated matrix, grown by doubling and updated in place.

    Why: rebuilding the matrix from the entries after every put cost O(entries x dim) per request. A put writes one
    row (reusing a freed one first), a drop zeroes its row and frees it; a zero row scores 0, below any threshold
    (the threshold is > 0), so freed rows can never hit.
    """

    def __init__(self) -> None:
        self.matrix: np.ndarray | None = None
        self.rows: dict[str, int] = {}
        self.keys: list[str | None] = []
        self.free: list[int] = []

    def set(self, key: str, unit: np.ndarray) -> None:
        if self.matrix is None:
            self.matrix = np.zeros((16, unit.shape[0]), dtype=np.float32)
        row = self.rows.get(key)
        if row is None:
            row = self._take_row()
            self.rows[key] = row
            self.keys[row] = key
        self.matrix[row] = unit

    def remove(self, key: str) -> None:
        row = self.rows.pop(key, None)
        if row is not None and self.matrix is not None:
            self.matrix[row] = 0.0
            self.keys[row] = None
            self.free.append(row)

    def best(self, query: np.ndarray) -> tuple[str, float] | None:
        """The stored key with the highest cosine to the unit ``query`` (None when empty)."""
        if self.matrix is None or not self.rows:
            return None
        scores = self.matrix[: len(self.keys)] @ query
        row = int(np.argmax(scores))
        key = self.keys[row]
        return None if key is None else (key, float(scores[row]))

    def _take_row(self) -> int:
        if self.free:
            return self.free.pop()
        if self.matrix is not None and len(self.keys) == self.matrix.shape[0]:
            grown = np.zeros((2 * self.matrix.shape[0], self.matrix.shape[1]), dtype=np.float32)
            grown[: len(self.keys)] = self.matrix
            self.matrix = grown
        self.keys.append(None)
        return len(self.keys) - 1


@dataclass
class _Scope:
    entries: OrderedDict[str, CachedAnswer] = field(default_factory=OrderedDict)
    vectors: Vectors = field(default_factory=Vectors)


class AnswerCache:
    """In-process, thread-safe; see the module docstring.

    Usage example::

        cache = AnswerCache(threshold=0.95, ttl_s=86_400, max_entries=10_000)
        cache.put(scope, "How long is the warranty?", vector, CachedAnswer(...))
        cache.exact(scope, "how long is the warranty")     # the entry
        cache.similar(scope, other_vector)                 # (entry, cosine) at or above the threshold, else None
    """

    def __init__(self, *, threshold: float, ttl_s: float, max_entries: int) -> None:
        self.threshold = threshold
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._scopes: dict[str, _Scope] = {}
        self._size = 0
        self._lock = threading.Lock()

    @property
    def degraded(self) -> bool:
        """Never: the in-process cache has no store to lose."""
        return False

    def __len__(self) -> int:
        return self._size

    def exact(self, scope: str, question: str) -> CachedAnswer | None:
        """The entry stored for this normalised question in ``scope``, if fresh."""
        key = normalise(question)
        with self._lock:
            found = self._scopes.get(scope)
            item = found.entries.get(key) if found else None
            if found is None or item is None:
                return None
            if self._expired(item):
                self._drop(scope, key)
                return None
            found.entries.move_to_end(key)
            return item

    def similar(self, scope: str, vector: np.ndarray) -> tuple[CachedAnswer, float] | None:
        """The closest entry whose question vector is within the threshold of ``vector`` (expired ones are dropped)."""
        query = unit_vector(vector)
        with self._lock:
            found = self._scopes.get(scope)
            while found is not None:
                best = found.vectors.best(query)
                if best is None or best[1] < self.threshold:
                    return None
                key, score = best
                entry = found.entries[key]
                if self._expired(entry):
                    self._drop(scope, key)  # the next closest may still be fresh and above the threshold
                    continue
                found.entries.move_to_end(key)
                return entry, score
            return None

    def put(self, scope: str, question: str, vector: np.ndarray | None, entry: CachedAnswer) -> None:
        """Store ``entry`` under the normalised question (and its unit vector for the semantic layer)."""
        key = normalise(question)
        unit = None if vector is None else unit_vector(vector)
        with self._lock:
            found = self._scopes.setdefault(scope, _Scope())
            if key not in found.entries:
                self._size += 1
            found.entries[key] = entry
            found.entries.move_to_end(key)
            if unit is not None:
                found.vectors.set(key, unit)
            else:
                found.vectors.remove(key)  # a re-put without a vector must not keep the old one
            while self._size > self.max_entries:
                self._evict_oldest()

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._scopes.clear()
            self._size = 0

    def _expired(self, entry: CachedAnswer) -> bool:
        return time.monotonic() - entry.stored_at > self.ttl_s

    def _drop(self, scope: str, key: str) -> None:
        found = self._scopes[scope]
        if found.entries.pop(key, None) is not None:
            self._size -= 1
        found.vectors.remove(key)
        if not found.entries:
            del self._scopes[scope]  # an emptied scope keeps no matrix

    def _evict_oldest(self) -> None:
        oldest_scope, oldest_key, oldest_at = None, None, float("inf")
        for name, found in self._scopes.items():
            if found.entries:
                key, entry = next(iter(found.entries.items()))
                if entry.stored_at < oldest_at:
                    oldest_scope, oldest_key, oldest_at = name, key, entry.stored_at
        if oldest_scope is None or oldest_key is None:
            self._size = 0
            return
        self._drop(oldest_scope, oldest_key)
