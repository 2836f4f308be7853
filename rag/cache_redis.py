"""The answer cache in Redis: one cache shared by every worker and replica of a served stack and index version.

Same keys and rules as the in-process :class:`rag.cache.AnswerCache` (the scope, the normalised question, the
threshold, ``ttl_s``, ``max_entries``); only where the entries live differs. The layout, under a namespace naming
the stack and index version (a promotion or a publish moves to a new namespace, so nothing stale is read; the old
one expires by TTL):

- ``<ns>:e:<scope>:<question>``: the entry as JSON (never pickle: whoever can write to Redis must not be able to
  run code in the service), with Redis' own expiry of ``ttl_s``.
- ``<ns>:v:<scope>``: a hash of the scope's question vectors (float32 bytes) and ``<ns>:n:<scope>`` a version
  counter bumped on every change to it. Why: the installed redis-server (Debian's 7.0) has no vector search module,
  so each worker keeps a local mirror of the scope's vectors (the in-place matrix of :mod:`rag.cache`) and reloads it
  only when the counter moved; a semantic lookup costs one GET of the counter, the matrix product, and one GET of
  the entry. A vector whose entry expired or was evicted is removed when a lookup finds it so.
- ``<ns>:lru``: a sorted set of every entry by last use; past ``max_entries`` the least recently used go. Entries
  that expired stay in it until evicted or met by a lookup, so the bound counts them too; being the least recently
  used, they are the first to go.

When Redis is unreachable the cache is off, not the service: lookups miss and puts are skipped, a warning is logged
once per outage, each failure is counted (``on_error``), and Redis is tried again every ``retry_s``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.cache import CachedAnswer, Vectors, normalise, unit_vector
from rag.types import Answer, Citation, RetrievedChunk, TokenCount

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

_MAX_STALE_VECTORS = 8  # dangling vectors cleaned in one lookup before giving up (it is a miss, not an error)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def encode_entry(entry: CachedAnswer) -> str:
    """The entry as JSON (``stored_at`` is not kept: Redis' expiry is the clock)."""
    return json.dumps({"q": entry.question, "a": asdict(entry.answer), "c": [asdict(c) for c in entry.chunks]})


def decode_entry(raw: bytes | str) -> CachedAnswer:
    """The entry from :func:`encode_entry`'s JSON."""
    data = json.loads(raw)
    answer: dict[str, Any] = data["a"]
    tokens = answer.get("tokens")
    return CachedAnswer(
        question=data["q"],
        answer=Answer(
            text=answer["text"],
            citations=tuple(Citation(**c) for c in answer["citations"]),
            abstained=answer["abstained"],
            support=answer["support"],
            sentences=tuple(answer["sentences"]),
            tokens=TokenCount(**tokens) if tokens else None,
        ),
        chunks=tuple(RetrievedChunk(**c) for c in data["c"]),
        stored_at=time.monotonic(),
    )


@dataclass
class _Mirror:
    version: int = -1
    vectors: Vectors = field(default_factory=Vectors)


class RedisAnswerCache:
    """The answer cache in Redis (see the module docstring); the same methods as :class:`rag.cache.AnswerCache`.

    Usage example::

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=0.25)
        cache = RedisAnswerCache(client, namespace="demo:3:2", threshold=0.9, ttl_s=86_400, max_entries=10_000)
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        threshold: float,
        ttl_s: float,
        max_entries: int,
        retry_s: float = 5.0,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.retry_s = retry_s
        self._client = client
        self._ns = f"ragops:cache:{namespace}"
        self._on_error = on_error
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._mirrors: dict[str, _Mirror] = {}
        self._lock = threading.Lock()
        self._down_since: float | None = None

    # -- keys

    def _entry_key(self, scope_id: str, qid: str) -> str:
        return f"{self._ns}:e:{scope_id}:{qid}"

    def _vectors_key(self, scope_id: str) -> str:
        return f"{self._ns}:v:{scope_id}"

    def _version_key(self, scope_id: str) -> str:
        return f"{self._ns}:n:{scope_id}"

    @property
    def _lru_key(self) -> str:
        return f"{self._ns}:lru"

    # -- outage handling

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable (the cache answers nothing)."""
        return self._down_since is not None

    def _usable(self) -> bool:
        if self._down_since is None:
            return True
        return time.monotonic() - self._down_since >= self.retry_s  # time to try again (still down until it works)

    def _failed(self, exc: Exception) -> None:
        if self._on_error is not None:
            self._on_error()
        if self._down_since is None:
            logger.warning(
                "answer cache redis unreachable (%s); serving without the cache, retrying every %.0f s",
                type(exc).__name__,
                self.retry_s,
                extra={"namespace": self._ns},
            )
        self._down_since = time.monotonic()

    def _recovered(self) -> None:
        if self._down_since is not None:
            logger.info("answer cache redis reachable again", extra={"namespace": self._ns})
        self._down_since = None

    # -- the cache

    def __len__(self) -> int:
        if not self._usable():
            return 0
        import redis

        try:
            return int(self._client.zcard(self._lru_key))
        except redis.RedisError as exc:
            self._failed(exc)
            return 0

    def exact(self, scope: str, question: str) -> CachedAnswer | None:
        """The entry stored for this normalised question in ``scope`` (None on a miss or while Redis is down)."""
        if not self._usable():
            return None
        import redis

        scope_id, qid = _digest(scope), _digest(normalise(question))
        try:
            raw = self._client.get(self._entry_key(scope_id, qid))
            if raw is not None:
                self._client.zadd(self._lru_key, {f"{scope_id}:{qid}": time.time()}, xx=True)
        except redis.RedisError as exc:
            self._failed(exc)
            return None
        self._recovered()
        return None if raw is None else decode_entry(raw)

    def similar(self, scope: str, vector: np.ndarray) -> tuple[CachedAnswer, float] | None:
        """The closest stored entry within the threshold of ``vector`` (None on a miss or while Redis is down)."""
        if not self._usable():
            return None
        import redis

        scope_id = _digest(scope)
        query = unit_vector(vector)
        try:
            for _ in range(_MAX_STALE_VECTORS):
                mirror = self._refreshed(scope_id)
                with self._lock:
                    best = mirror.vectors.best(query)
                if best is None or best[1] < self.threshold:
                    self._recovered()
                    return None
                qid, score = best
                raw = self._client.get(self._entry_key(scope_id, qid))
                if raw is not None:
                    self._client.zadd(self._lru_key, {f"{scope_id}:{qid}": time.time()}, xx=True)
                    self._recovered()
                    return decode_entry(raw), score
                self._forget(scope_id, qid)  # expired or evicted: its vector must not match again
        except redis.RedisError as exc:
            self._failed(exc)
        return None

    def put(self, scope: str, question: str, vector: np.ndarray | None, entry: CachedAnswer) -> None:
        """Store ``entry`` (and its unit vector) for every worker; skipped while Redis is down."""
        if not self._usable():
            return
        import redis

        scope_id, qid = _digest(scope), _digest(normalise(question))
        member = f"{scope_id}:{qid}"
        unit = None if vector is None else unit_vector(vector)
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.set(self._entry_key(scope_id, qid), encode_entry(entry), px=self._ttl_ms)
            if unit is not None:
                pipe.hset(self._vectors_key(scope_id), qid, unit.tobytes())
            else:
                pipe.hdel(self._vectors_key(scope_id), qid)
            pipe.incr(self._version_key(scope_id))
            pipe.pexpire(self._vectors_key(scope_id), self._ttl_ms)
            pipe.pexpire(self._version_key(scope_id), self._ttl_ms)
            pipe.zadd(self._lru_key, {member: time.time()})
            pipe.pexpire(self._lru_key, self._ttl_ms)
            pipe.zcard(self._lru_key)
            results = pipe.execute()
            version, size = int(results[2]), int(results[-1])
            with self._lock:  # our own change: update the mirror in place when it was current before it
                mirror = self._mirrors.get(scope_id)
                if mirror is not None and mirror.version == version - 1:
                    if unit is not None:
                        mirror.vectors.set(qid, unit)
                    else:
                        mirror.vectors.remove(qid)
                    mirror.version = version
            if size > self.max_entries:
                self._evict(size - self.max_entries)
        except redis.RedisError as exc:
            self._failed(exc)
            return
        self._recovered()

    def clear(self) -> None:
        """Forget every entry of this namespace (this stack and index version) for all workers."""
        import redis

        try:
            keys = list(self._client.scan_iter(match=f"{self._ns}:*", count=1000))
            if keys:
                self._client.delete(*keys)
        except redis.RedisError as exc:
            self._failed(exc)
        with self._lock:
            self._mirrors.clear()

    # -- internals

    def _refreshed(self, scope_id: str) -> _Mirror:
        """The local mirror of the scope's vectors, reloaded when another worker (or expiry) changed them."""
        raw_version = self._client.get(self._version_key(scope_id))
        version = int(raw_version) if raw_version is not None else 0
        with self._lock:
            mirror = self._mirrors.get(scope_id)
            if mirror is not None and mirror.version == version:
                return mirror
        pipe = self._client.pipeline(transaction=True)
        pipe.get(self._version_key(scope_id))
        pipe.hgetall(self._vectors_key(scope_id))
        raw_version, rows = pipe.execute()
        fresh = _Mirror(version=int(raw_version) if raw_version is not None else 0)
        for qid, blob in rows.items():
            fresh.vectors.set(qid.decode() if isinstance(qid, bytes) else qid, np.frombuffer(blob, dtype=np.float32))
        with self._lock:
            self._mirrors[scope_id] = fresh
        return fresh

    def _forget(self, scope_id: str, qid: str) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(self._vectors_key(scope_id), qid)
        pipe.incr(self._version_key(scope_id))
        pipe.zrem(self._lru_key, f"{scope_id}:{qid}")
        pipe.execute()

    def _evict(self, count: int) -> None:
        popped = self._client.zpopmin(self._lru_key, count) or []
        if not popped:
            return
        pipe = self._client.pipeline(transaction=True)
        for item in popped:  # (member, score) pairs; the client is not decoding, so members are bytes
            member = item[0] if isinstance(item, tuple | list) else item
            text = member.decode() if isinstance(member, bytes) else str(member)
            scope_id, qid = text.split(":", 1)
            pipe.delete(self._entry_key(scope_id, qid))
            pipe.hdel(self._vectors_key(scope_id), qid)
            pipe.incr(self._version_key(scope_id))
        pipe.execute()


def redis_client(url: str, *, timeout_s: float) -> redis.Redis:
    """A client with short timeouts (an outage must cost a request milliseconds, not seconds)."""
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)


def erase_cached(client: redis.Redis, doc_ids: Collection[str]) -> int:
    """Delete every cached answer, of any stack and index version, made from a chunk of ``doc_ids`` (an erasure:
    the entry holds the chunks' text). Keys that are not answer entries of ours are left alone. The scope's vector
    of a deleted entry stays until a lookup meets it and finds no entry, which then forgets it (see above)."""
    doomed = set(doc_ids)
    deleted = 0
    for key in client.scan_iter(match="*:e:*", count=1000):
        raw = client.get(key)
        if raw is None:
            continue
        try:
            entry = decode_entry(raw)
        except (ValueError, KeyError, TypeError):
            continue
        if any(chunk.doc_id in doomed for chunk in entry.chunks):
            deleted += int(client.delete(key))
    return deleted
