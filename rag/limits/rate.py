"""Rate limits per API key and per tenant: requests and tokens per minute, over the `limits` library.

Why `limits`: its strategies (sliding-window counter, moving and fixed windows) run atomically in Redis (Lua), so all
workers of all replicas share one budget per key; the same code runs on in-process memory storage. With no Redis
configured the limits are per worker. When a configured Redis is unreachable the limiter falls back to per-worker
memory limits instead of refusing or admitting everything, says so (``Decision.degraded``, a warning naming the
storage) and tries Redis again every ``redis_retry_s``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from rag.limits.settings import LimitsSettings

if TYPE_CHECKING:
    from limits import RateLimitItem
    from limits.storage import RedisStorage, Storage
    from limits.strategies import RateLimiter as Strategy
    from redis import Redis

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """The verdict on one request.

    ``limit`` names the quota that refused it (``"key:requests_per_minute"``, ``"tenant:tokens_per_minute"``, ...);
    ``retry_after_s`` is when that quota has room again (0 when allowed). ``storage`` is ``"redis"`` or
    ``"memory"``; ``degraded`` is true while a configured Redis is down and the limits are per worker.
    """

    allowed: bool
    limit: str | None
    retry_after_s: float
    storage: str
    degraded: bool


@dataclass(frozen=True)
class _Quota:
    scope: str  # "key" | "tenant"
    name: str  # "requests_per_minute" | "tokens_per_minute"
    item: RateLimitItem

    @property
    def label(self) -> str:
        return f"{self.scope}:{self.name}"


def _strategy(name: str, storage: Storage) -> Strategy:
    from limits.strategies import STRATEGIES

    return STRATEGIES[name](storage)


class RateLimiter:
    """Checks and counts a request against every configured quota of its key and tenant.

    ``check(api_key=..., tenant=..., tokens=n)`` first tests every quota and only counts the request when all have
    room, so a refused request uses up none of them. Tokens are counted when the caller knows them (an estimate of
    prompt plus answer); with ``tokens=0`` only request quotas apply. Not async: one call is a single Redis round
    trip per quota (sub-millisecond on a LAN) or a dictionary update in memory.
    """

    def __init__(self, settings: LimitsSettings) -> None:
        from limits import RateLimitItemPerMinute
        from limits.storage import MemoryStorage

        self.settings = settings
        quotas = [
            ("key", "requests_per_minute", settings.requests_per_minute),
            ("key", "tokens_per_minute", settings.tokens_per_minute),
            ("tenant", "requests_per_minute", settings.tenant_requests_per_minute),
            ("tenant", "tokens_per_minute", settings.tenant_tokens_per_minute),
        ]
        self._quotas = [
            _Quota(scope, name, RateLimitItemPerMinute(amount, namespace=f"ragops-{scope}-{name}"))
            for scope, name, amount in quotas
            if amount is not None
        ]
        self._memory = _strategy(settings.strategy, MemoryStorage())
        self._redis: Strategy | None = None
        self._redis_storage: RedisStorage | None = None
        self._redis_down_since: float | None = None
        if settings.redis_url:
            from limits.storage import RedisStorage

            storage = RedisStorage(
                settings.redis_url,
                wrap_exceptions=True,  # every Redis failure arrives as limits.errors.StorageError
                socket_connect_timeout=settings.redis_timeout_s,
                socket_timeout=settings.redis_timeout_s,
            )
            self._redis = _strategy(settings.strategy, storage)
            self._redis_storage = storage
        logger.info(
            "rate limits: %s on %s storage",
            ", ".join(q.label for q in self._quotas) or "none",
            "redis" if self._redis else "memory (per worker)",
        )

    @property
    def enabled(self) -> bool:
        """Whether any quota is configured (otherwise every request is allowed without a storage call)."""
        return bool(self._quotas)

    @property
    def degraded(self) -> bool:
        """A Redis is configured but unreachable: the limits are per worker until it is back."""
        return self._redis_down_since is not None

    def _active(self) -> tuple[Strategy, str]:
        if self._redis is None:
            return self._memory, "memory"
        if self._redis_down_since is not None:
            if time.monotonic() - self._redis_down_since < self.settings.redis_retry_s:
                return self._memory, "memory"
            self._redis_down_since = None  # time to try Redis again
        return self._redis, "redis"

    def _fall_back(self, exc: Exception) -> None:
        if self._redis_down_since is None:
            logger.warning(
                "rate-limit storage redis unreachable (%s); falling back to per-worker memory limits, "
                "retrying redis every %.0f s",
                exc,
                self.settings.redis_retry_s,
            )
        self._redis_down_since = time.monotonic()

    def close(self) -> None:
        """Close the Redis connections (a worker shutting down; later checks count in memory)."""
        storage, self._redis_storage, self._redis = self._redis_storage, None, None
        if storage is not None:  # limits types its client as a protocol; for a redis:// URL it is a redis.Redis
            cast("Redis", storage.get_connection()).close()

    def check(self, *, api_key: str | None, tenant: str | None, tokens: int = 0) -> Decision:
        """Allow and count the request, or refuse it naming the quota and when to retry."""
        from limits.errors import StorageError

        strategy, storage = self._active()
        try:
            return self._check(strategy, storage, api_key, tenant, tokens)
        except StorageError as exc:
            self._fall_back(exc)
            return self._check(self._memory, "memory", api_key, tenant, tokens)

    def _check(
        self, strategy: Strategy, storage: str, api_key: str | None, tenant: str | None, tokens: int
    ) -> Decision:
        degraded = storage == "memory" and self._redis is not None
        ids = {"key": api_key, "tenant": tenant}
        applicable = []
        for quota in self._quotas:
            identity = ids[quota.scope]
            cost = tokens if quota.name == "tokens_per_minute" else 1
            if identity is None or cost <= 0:
                continue
            applicable.append((quota, identity, cost))
        for quota, identity, cost in applicable:
            if not strategy.test(quota.item, identity, cost=cost):
                return Decision(False, quota.label, self._retry_after(strategy, quota, identity), storage, degraded)
        for quota, identity, cost in applicable:
            if not strategy.hit(quota.item, identity, cost=cost):  # another worker took the room meanwhile
                return Decision(False, quota.label, self._retry_after(strategy, quota, identity), storage, degraded)
        return Decision(True, None, 0.0, storage, degraded)

    def charge_tokens(self, *, api_key: str | None, tenant: str | None, tokens: int) -> None:
        """Count the tokens a finished request used against the token quotas (its request was counted by
        :meth:`check`). A request that overran the quota fills it, so the next one is refused until it has room."""
        from limits.errors import StorageError

        if tokens <= 0:
            return
        strategy, _ = self._active()
        try:
            self._charge(strategy, api_key, tenant, tokens)
        except StorageError as exc:
            self._fall_back(exc)
            self._charge(self._memory, api_key, tenant, tokens)

    def _charge(self, strategy: Strategy, api_key: str | None, tenant: str | None, tokens: int) -> None:
        ids = {"key": api_key, "tenant": tenant}
        for quota in self._quotas:
            identity = ids[quota.scope]
            if quota.name != "tokens_per_minute" or identity is None:
                continue
            if not strategy.hit(quota.item, identity, cost=tokens):
                room = strategy.get_window_stats(quota.item, identity).remaining
                if room > 0:
                    strategy.hit(quota.item, identity, cost=room)

    @staticmethod
    def _retry_after(strategy: Strategy, quota: _Quota, identity: str) -> float:
        return _seconds_until_room(strategy, quota.item, identity)


def _seconds_until_room(strategy: Strategy, item: RateLimitItem, identity: str) -> float:
    stats = strategy.get_window_stats(item, identity)
    return float(max(1, math.ceil(stats.reset_time - time.time())))


class FailureLimiter:
    """Counts failures per client (failed authentications per client address) and says when one has had too many.

    Only failures are counted, so a client with a valid credential never uses the budget up; a client past it is
    refused (every credential, valid or not: answering "valid" would keep the guessing oracle open) until the
    window has room. Per worker, in memory: a guessing client spread over N workers gets N budgets, still bounded.

    Usage example::

        failures = FailureLimiter(per_minute=20)
        failures.retry_after("203.0.113.7")   # None: may try
        failures.fail("203.0.113.7")           # one more refused credential
    """

    def __init__(self, per_minute: int, *, strategy: str = "sliding-window-counter") -> None:
        from limits import RateLimitItemPerMinute
        from limits.storage import MemoryStorage

        self._item = RateLimitItemPerMinute(per_minute, namespace="ragops-failures")
        self._strategy = _strategy(strategy, MemoryStorage())

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again; None while it is under the limit."""
        if self._strategy.test(self._item, client):
            return None
        return _seconds_until_room(self._strategy, self._item, client)

    def fail(self, client: str) -> None:
        """Count one failure of ``client``."""
        self._strategy.hit(self._item, client)
