"""Protection of the query service under load: rate limits, admission control, circuit breakers.

Library components, each used by one stage of the request path:

- :class:`RateLimiter` (``rate``): per API key and per tenant, requests and tokens per minute, over the `limits`
  library; Redis storage shared by all workers, per-worker memory storage when Redis is not configured or down.
- :class:`FailureLimiter` (``rate``): failures per client (refused credentials per client address, used by
  :class:`rag.security.gate.Gate`); past the limit the client is refused until the window has room.
- :class:`AdmissionController` (``admission``): bounded concurrency and a bounded wait queue; past capacity a request
  is rejected at once (:class:`rag.errors.Overloaded`, with a retry-after estimate), never queued without bound.
- :class:`CircuitBreaker` (``breaker``): stops calling a failing dependency (LLM, Qdrant, MLflow) for a while.
"""

from __future__ import annotations

from rag.limits.admission import AdmissionController
from rag.limits.breaker import BreakerState, CircuitBreaker
from rag.limits.rate import Decision, FailureLimiter, RateLimiter
from rag.limits.settings import LimitsSettings

__all__ = [
    "AdmissionController",
    "BreakerState",
    "CircuitBreaker",
    "Decision",
    "FailureLimiter",
    "LimitsSettings",
    "RateLimiter",
]
