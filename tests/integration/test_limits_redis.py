"""Rate limits shared through a real Redis by two workers, and the per-worker fallback when Redis dies."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from rag.limits import LimitsSettings, RateLimiter
from tests.fixtures.datastores import RedisServer

pytestmark = [pytest.mark.integration]


def test_two_workers_share_one_budget(redis_url: str) -> None:
    settings = LimitsSettings(redis_url=redis_url, requests_per_minute=5, tokens_per_minute=1000)
    first, second = RateLimiter(settings), RateLimiter(settings)  # two worker processes' limiters
    key = f"key-{uuid.uuid4()}"
    allowed = [(first if i % 2 else second).check(api_key=key, tenant=None, tokens=10) for i in range(7)]
    assert [d.allowed for d in allowed] == [True] * 5 + [False] * 2
    assert allowed[-1].limit == "key:requests_per_minute" and allowed[-1].storage == "redis"
    assert not allowed[-1].degraded
    other = f"key-{uuid.uuid4()}"
    assert first.check(api_key=other, tenant=None, tokens=900).allowed
    refused = second.check(api_key=other, tenant=None, tokens=200)
    assert not refused.allowed and refused.limit == "key:tokens_per_minute"


def test_redis_down_falls_back_to_per_worker_limits_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer.start(tmp_path) as redis:
        settings = LimitsSettings(redis_url=redis.url, requests_per_minute=3, redis_retry_s=60)
        first, second = RateLimiter(settings), RateLimiter(settings)
        assert first.check(api_key="k", tenant=None).storage == "redis"
        assert second.check(api_key="k", tenant=None).storage == "redis"
        redis.stop()
        with caplog.at_level(logging.WARNING, logger="rag.limits.rate"):
            decisions = [first.check(api_key="k", tenant=None) for _ in range(4)]
        assert all(d.storage == "memory" and d.degraded for d in decisions) and first.degraded
        assert [d.allowed for d in decisions] == [True, True, True, False]  # still limited, now per worker
        assert "rate-limit storage redis unreachable" in caplog.text and "per-worker memory" in caplog.text
        assert caplog.text.count("unreachable") == 1  # said once, not per request
        assert second.check(api_key="k", tenant=None).allowed  # the other worker has its own budget now


def test_closing_releases_the_redis_connections(redis_url: str) -> None:
    import redis

    observer = redis.Redis.from_url(redis_url)
    limiter = RateLimiter(LimitsSettings(redis_url=redis_url, requests_per_minute=5))
    name = f"limiter-{uuid.uuid4()}"
    assert limiter.check(api_key=name, tenant=None).storage == "redis"
    before = len(observer.client_list())
    limiter.close()
    assert len(observer.client_list()) == before - 1  # the limiter's pooled connection is gone, not left to GC
    assert limiter.check(api_key=name, tenant=None).storage == "memory"  # a late check still answers
    observer.close()
