"""The answer cache in a real Redis: two workers (two caches with their own connections and vector mirrors) share
hits, scopes and stack versions never share, TTL and the size bound hold, and an outage serves uncached."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rag.access import AccessScope
from rag.cache import CachedAnswer, scope_key
from rag.cache_redis import RedisAnswerCache, redis_client
from rag.types import Answer, Citation, RetrievedChunk, TokenCount
from tests.fixtures.datastores import RedisServer

CHUNK = RetrievedChunk("c1", "warranty.md", "Warranty", "warranty.md", 0, "Two years.", 0.8, 0.8, "acme", {"p": 1})
ANSWER = Answer(
    text="Two years [1].",
    citations=(Citation(1, "warranty.md", "warranty.md", "c1", 0, 0.8, "Warranty"),),
    abstained=False,
    support=0.9,
    sentences=("Two years [1].",),
    tokens=TokenCount(120, 8),
)
SCOPE = scope_key(AccessScope(tenant="acme", groups=("staff",)), None, 5)


def _entry(question: str) -> CachedAnswer:
    return CachedAnswer(question, ANSWER, (CHUNK,), time.monotonic())


def _unit(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=384).astype(np.float32)


def _cache(url: str, namespace: str, **kw: float) -> RedisAnswerCache:
    args: dict[str, float] = {"threshold": 0.95, "ttl_s": 60, "max_entries": 100} | kw
    return RedisAnswerCache(
        redis_client(url, timeout_s=0.25),
        namespace=namespace,
        threshold=args["threshold"],
        ttl_s=args["ttl_s"],
        max_entries=int(args["max_entries"]),
    )


@pytest.fixture
def namespace() -> str:
    return f"test:{uuid.uuid4().hex[:8]}"


def test_two_workers_share_exact_and_semantic_hits(redis_url: str, namespace: str) -> None:
    a, b = _cache(redis_url, namespace), _cache(redis_url, namespace)
    assert b.similar(SCOPE, _unit(1)) is None  # b's mirror is loaded (empty) before a writes
    a.put(SCOPE, "How long is the warranty?", _unit(1), _entry("How long is the warranty?"))
    hit = b.exact(SCOPE, "how long is the WARRANTY")
    assert hit is not None and hit.answer == ANSWER and hit.chunks == (CHUNK,)  # the whole answer survives JSON
    near = _unit(1) + 0.02 * _unit(2)
    found = b.similar(SCOPE, near)  # b's mirror was stale: the version counter made it reload
    assert found is not None and found[0].question == "How long is the warranty?" and found[1] > 0.95
    assert b.similar(SCOPE, _unit(3)) is None  # unrelated question
    a.put(SCOPE, "Where is the returns form?", _unit(4), _entry("Where is the returns form?"))
    assert b.similar(SCOPE, _unit(4)) is not None  # a later put by the other worker is seen too
    assert len(a) == len(b) == 2


def test_scopes_and_stack_versions_never_share(redis_url: str, namespace: str) -> None:
    cache = _cache(redis_url, namespace, threshold=0.5)
    cache.put(SCOPE, "q", _unit(1), _entry("q"))
    beta, acme_hr = AccessScope(tenant="beta", groups=("staff",)), AccessScope(tenant="acme", groups=("staff", "hr"))
    for other in (scope_key(beta, None, 5), scope_key(acme_hr, None, 5)):
        assert cache.exact(other, "q") is None and cache.similar(other, _unit(1)) is None
    promoted = _cache(redis_url, namespace + ":next")  # another stack or index version: another namespace
    assert promoted.exact(SCOPE, "q") is None and promoted.similar(SCOPE, _unit(1)) is None


def test_ttl_and_size_bound(redis_url: str, namespace: str) -> None:
    short = _cache(redis_url, namespace, ttl_s=0.05)
    short.put(SCOPE, "q", _unit(1), _entry("q"))
    assert short.similar(SCOPE, _unit(1)) is not None
    time.sleep(0.1)
    assert short.exact(SCOPE, "q") is None and short.similar(SCOPE, _unit(1)) is None  # the dangling vector goes
    small = _cache(redis_url, namespace + ":small", max_entries=2)
    for i in range(3):
        small.put(SCOPE, f"q{i}", _unit(10 + i), _entry(f"q{i}"))
    assert len(small) == 2 and small.exact(SCOPE, "q0") is None and small.similar(SCOPE, _unit(10)) is None
    assert small.similar(SCOPE, _unit(12)) is not None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer.start(tmp_path) as server:
        yield server


def test_an_outage_serves_uncached_warns_once_and_counts(
    own_redis: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[int] = []
    cache = RedisAnswerCache(
        redis_client(own_redis.url, timeout_s=0.1),
        namespace=namespace,
        threshold=0.95,
        ttl_s=60,
        max_entries=10,
        retry_s=0.0,  # retry at once, so every call below really meets the dead server
        on_error=lambda: errors.append(1),
    )
    cache.put(SCOPE, "q", _unit(1), _entry("q"))
    own_redis.stop()
    with caplog.at_level(logging.WARNING, logger="rag.cache_redis"):
        started = time.perf_counter()
        assert cache.exact(SCOPE, "q") is None
        assert cache.similar(SCOPE, _unit(1)) is None
        cache.put(SCOPE, "q2", _unit(2), _entry("q2"))  # skipped, not raised
        elapsed = time.perf_counter() - started
    assert cache.degraded and len(errors) == 3 and elapsed < 1.0
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1  # one warning per outage
