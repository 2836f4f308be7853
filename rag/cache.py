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

import numpy as np

from rag.access import AccessScope
from rag.types import Answer, RetrievedChunk

_SPACE = re.compile(r"\s+")


def normalise(question: str) -> str:
    """The exact layer's key: NFKC, case-folded, whitespace collapsed, trailing punctuation dropped."""
    text = _SPACE.sub(" ", unicodedata.normalize("NFKC", question).casefold()).strip()
    return text.rstrip("?!. ")


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


@dataclass
class _Scope:
    entries: OrderedDict[str, tuple[CachedAnswer, np.ndarray | None]] = field(default_factory=OrderedDict)
    matrix: np.ndarray | None = None
    keys: list[str] = field(default_factory=list)


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
            if self._expired(item[0]):
                self._drop(scope, key)
                return None
            found.entries.move_to_end(key)
            return item[0]

    def similar(self, scope: str, vector: np.ndarray) -> tuple[CachedAnswer, float] | None:
        """The freshest-matching entry whose question vector is within the threshold of ``vector``."""
        with self._lock:
            found = self._scopes.get(scope)
            if found is None or not found.entries:
                return None
            if found.matrix is None:
                rows = [(k, v) for k, (_, v) in found.entries.items() if v is not None]
                if not rows:
                    return None
                found.keys = [k for k, _ in rows]
                found.matrix = np.vstack([v for _, v in rows])
            query = np.asarray(vector, dtype=np.float32)
            query = query / (np.linalg.norm(query) or 1.0)
            scores = found.matrix @ query
            best = int(np.argmax(scores))
            score = float(scores[best])
            if score < self.threshold:
                return None
            key = found.keys[best]
            entry = found.entries[key][0]
            if self._expired(entry):
                self._drop(scope, key)
                return None
            found.entries.move_to_end(key)
            return entry, score

    def put(self, scope: str, question: str, vector: np.ndarray | None, entry: CachedAnswer) -> None:
        """Store ``entry`` under the normalised question (and its unit vector for the semantic layer)."""
        key = normalise(question)
        unit = None
        if vector is not None:
            unit = np.asarray(vector, dtype=np.float32)
            unit = unit / (np.linalg.norm(unit) or 1.0)
        with self._lock:
            found = self._scopes.setdefault(scope, _Scope())
            if key not in found.entries:
                self._size += 1
            found.entries[key] = (entry, unit)
            found.entries.move_to_end(key)
            found.matrix = None
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
            found.matrix = None

    def _evict_oldest(self) -> None:
        oldest_scope, oldest_key, oldest_at = None, None, float("inf")
        for name, found in self._scopes.items():
            if found.entries:
                key, (entry, _) = next(iter(found.entries.items()))
                if entry.stored_at < oldest_at:
                    oldest_scope, oldest_key, oldest_at = name, key, entry.stored_at
        if oldest_scope is None or oldest_key is None:
            self._size = 0
            return
        self._drop(oldest_scope, oldest_key)
