"""Admission control: a bounded number of requests in flight and a bounded queue in front of them.

Why: past the machine's capacity, queueing more work only makes every request slower until all of them time out.
Bounding both the concurrency and the queue keeps the latency of admitted requests bounded and sheds the rest at
once with an honest retry-after estimate (503 + ``Retry-After``), which clients and load balancers act on.

The queue's wait bound adapts, as CoDel does for packets (Nichols and Jacobson, "Controlling Queue Delay", 2012) and
as Facebook's RPC servers do for requests ("Fail at Scale", 2015): a queue that empties now and then is absorbing a
burst, and a waiter may wait up to ``queue_timeout_s``; a queue that has not emptied for ``overload_interval_s`` is a
standing queue (sustained overload), where waiting only adds latency to every admitted request, so a waiter is shed
once it has waited ``overload_wait_s``. The admitted requests' latency then stays near its unloaded value while the
excess is refused cheaply.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from rag.errors import Overloaded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdmissionStats:
    """What the controller holds right now (for /metrics and logs)."""

    active: int
    waiting: int
    shed: int
    mean_service_s: float


class AdmissionController:
    """At most ``max_concurrency`` holders of a slot and ``max_queue`` waiters; everyone else is rejected at once.

    Use one per worker process, from its event loop::

        async with controller.slot():
            ...  # the request's work

    :class:`rag.errors.Overloaded` is raised (nothing processed) when the queue is full or no slot frees up within
    ``queue_timeout_s``; its ``retry_after_s`` estimates when a slot frees (queue length x mean service time).
    """

    def __init__(
        self,
        max_concurrency: int,
        max_queue: int,
        queue_timeout_s: float = 0.1,
        *,
        overload_wait_s: float | None = None,
        overload_interval_s: float = 0.1,
    ) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue >= 0")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.overload_wait_s = queue_timeout_s if overload_wait_s is None else min(overload_wait_s, queue_timeout_s)
        self.overload_interval_s = overload_interval_s
        self._queued_since: float | None = None  # when the queue last went from empty to non-empty
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()  # first come, first served
        self._active = 0
        self._waiting = 0
        self._shed = 0
        self._mean_service_s = 0.1  # exponentially weighted; the first requests refine it

    def resize(self, max_concurrency: int) -> None:
        """Change the number of slots (the service sizes them to the stack it serves); holders keep theirs, waiters
        are let in at once when slots were added."""
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if max_concurrency != self.max_concurrency:
            logger.info("admission slots per worker: %d -> %d", self.max_concurrency, max_concurrency)
        self.max_concurrency = max_concurrency
        self._grant()

    def _full(self) -> bool:
        return self._active >= self.max_concurrency

    def _grant(self) -> None:
        """Hand free slots to the longest waiters (counted as active at once, so no newcomer overtakes them)."""
        while self._waiters and not self._full():
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._active += 1

    def overloaded(self, now: float | None = None) -> bool:
        """A standing queue: requests have been waiting without a break for ``overload_interval_s`` or longer."""
        since = self._queued_since
        return since is not None and (time.monotonic() if now is None else now) - since >= self.overload_interval_s

    def stats(self) -> AdmissionStats:
        """Current occupancy and the count of shed requests."""
        return AdmissionStats(self._active, self._waiting, self._shed, self._mean_service_s)

    def retry_after_s(self) -> float:
        """Seconds until a slot is likely free for a newcomer, rounded up to whole seconds (at least 1)."""
        ahead = self._waiting + 1
        return float(max(1, math.ceil(ahead * self._mean_service_s / self.max_concurrency)))

    def _reject(self, why: str) -> Overloaded:
        self._shed += 1
        retry = self.retry_after_s()
        if self._shed == 1 or self._shed % 1000 == 0:  # under overload a line per refusal would flood the log
            logger.warning(
                "request shed: %s (shed so far=%d active=%d waiting=%d retry_after_s=%.0f)",
                why,
                self._shed,
                self._active,
                self._waiting,
                retry,
            )
        return Overloaded(f"server overloaded ({why}); retry in {retry:.0f} s", retry)

    def shed_at_door(self) -> Overloaded | None:
        """The refusal a newcomer would get before waiting (queue full, or a standing queue it could not get through
        within ``overload_wait_s`` at the current service time), counted as shed; None when it may queue."""
        if not (self._full() or self._waiting):
            return None
        if self._waiting >= self.max_queue:
            return self._reject("queue full")
        expected_wait = self._waiting * self._mean_service_s / self.max_concurrency
        if self.overloaded() and expected_wait >= self.overload_wait_s:
            return self._reject(f"standing queue: expected wait {expected_wait:.3g} s")
        return None

    async def _wait_for_slot(self) -> None:
        """Wait for a slot: up to ``queue_timeout_s`` behind a draining queue, ``overload_wait_s`` behind a standing
        one (the bound is fixed on arrival, so the queue stays first come, first served)."""
        bound = self.overload_wait_s if self.overloaded() else self.queue_timeout_s
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, bound)  # granted (and counted active) by _grant
        except BaseException as exc:  # timed out, or the request was cancelled (its client left)
            if waiter.done() and not waiter.cancelled():  # granted just as it gave up: hand the slot on
                self._active -= 1
                self._grant()
            if isinstance(exc, TimeoutError):
                why = "standing queue" if bound < self.queue_timeout_s else "queue"
                raise self._reject(f"no slot within {bound:.3g} s behind the {why}") from None
            raise

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the duration of the block, or raise :class:`Overloaded` without running it."""
        if self._full() or self._waiting:  # no free slot (or others wait first): join the queue, if room
            if self._waiting >= self.max_queue:
                raise self._reject("queue full")
            if not self._waiting:
                self._queued_since = time.monotonic()
            self._waiting += 1
            try:
                await self._wait_for_slot()
            finally:
                self._waiting -= 1
                if not self._waiting:
                    self._queued_since = None
        else:
            self._active += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self._active -= 1
            self._grant()
            self._mean_service_s = 0.8 * self._mean_service_s + 0.2 * (time.monotonic() - started)
