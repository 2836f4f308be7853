"""A circuit breaker for a dependency (the LLM, Qdrant, MLflow): stop calling it while it keeps failing.

Why: a dependency that is down makes every request wait for its timeout, which ties up the slots of the admission
controller and takes the whole service down with it. After ``failure_threshold`` consecutive failures the breaker
opens and calls fail at once (:class:`rag.errors.CircuitOpen`, 503 with Retry-After); after ``reset_timeout_s`` one
trial call is let through (half-open): success closes the breaker, failure opens it again.

Written here rather than taken from PyPI: pybreaker's async support goes through Tornado, and the asyncio ones
(aiobreaker, purgatory) are barely maintained; the state machine is thirty lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TypeVar

from rag.errors import CircuitOpen

logger = logging.getLogger(__name__)

T = TypeVar("T")


class BreakerState(StrEnum):
    """closed: calls go through; open: calls are refused; half_open: one trial call decides."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker with a reset timeout; one per dependency per worker."""

    def __init__(
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker past its timeout reports half-open)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_timeout_s:
            return BreakerState.HALF_OPEN
        return self._state

    def before_call(self) -> None:
        """Raise :class:`CircuitOpen` if the call must not be made; otherwise let it through."""
        state = self.state
        if state is BreakerState.CLOSED:
            return
        if state is BreakerState.HALF_OPEN and not self._trial_running:
            self._state = BreakerState.HALF_OPEN
            self._trial_running = True
            return
        remaining = max(0.0, self.reset_timeout_s - (self._clock() - self._opened_at))
        raise CircuitOpen(self.name, max(1.0, remaining))

    def record_success(self) -> None:
        """The call succeeded: close the breaker."""
        if self._state is not BreakerState.CLOSED:
            logger.info("circuit %s closed again", self.name)
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._trial_running = False

    def record_failure(self) -> None:
        """The call failed: count it; open the breaker at the threshold, or at once after a failed trial."""
        self._failures += 1
        if self._trial_running or self._failures >= self.failure_threshold:
            if self._state is not BreakerState.OPEN or self._trial_running:
                logger.warning("circuit %s open after %d failures", self.name, self._failures)
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._trial_running = False

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` through the breaker; any exception counts as a failure and propagates."""
        self.before_call()
        try:
            result = await fn()
        except Exception:  # a cancelled call (client gone) says nothing about the dependency
            self.record_failure()
            raise
        self.record_success()
        return result
