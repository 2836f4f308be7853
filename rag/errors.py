"""Errors raised by the query side (stacks, retrieval, answering).

RagError
 ├── StackError                 a stack that cannot be registered, loaded or served as configured
 │    ├── StackNotFound         no such stack version, or no version holds the requested alias
 │    └── StackMismatch         the stack does not fit the index it names (embedder, chunking, collection)
 ├── RetrievalError             the vector store could not answer (missing index, Qdrant failure)
 ├── AnswerError                the answerer failed (LLM unreachable, bad response)
 ├── Overloaded                 past capacity (admission queue full): 503 with Retry-After
 ├── CircuitOpen                a dependency's circuit breaker is open: 503 with Retry-After
 ├── StoreError                 the request store cannot be opened or migrated (bad URL, newer schema)
 ├── StoreUnavailable           the request store's database is down for now: 503 with Retry-After
 ├── GuardrailError             a guardrail cannot be built or run as configured
 │    └── GuardrailModelMismatch  the injection classifier was trained on another embedder
 └── BadQuery (ValueError)      the caller's fault: empty or oversized question, unknown filter key, bad top_k

Library errors only: the service maps them to HTTP statuses (BadQuery -> 422, StackNotFound -> 404 or 503,
RetrievalError/AnswerError -> 503) and the CLI to exit codes.
"""

from __future__ import annotations

from pipelines.errors import RagopsError


class RagError(RagopsError):
    """Base of every error raised on purpose by the ``rag`` package."""


class StackError(RagError):
    """A stack cannot be registered, loaded or served as configured; the message names the fix."""


class StackNotFound(StackError, LookupError):
    """No stack version matches (unknown version number, or no version holds the alias)."""


class StackMismatch(StackError):
    """The stack's recorded embedder, chunking or collection differs from the index it would read."""


class RetrievalError(RagError):
    """The index could not be queried."""


class AnswerError(RagError):
    """The answerer could not produce an answer."""


class BadQuery(RagError, ValueError):
    """The request itself is invalid (empty question, unknown filter key, out-of-range top_k)."""


class Overloaded(RagError):
    """The service is past capacity (admission queue full, or no slot in time): retry after ``retry_after_s``.

    The service answers 503 with a ``Retry-After`` header; nothing was processed.
    """

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(RagError):
    """A caller's quota is used up (``limit`` names it, e.g. ``key:requests_per_minute``): the service answers 429
    with a ``Retry-After`` header; nothing was processed."""

    def __init__(self, limit: str, retry_after_s: float) -> None:
        super().__init__(f"rate limit {limit} exceeded; retry in {retry_after_s:.0f} s")
        self.limit = limit
        self.retry_after_s = retry_after_s


class BudgetExceeded(RateLimited):
    """A caller's daily or monthly budget (``budget``, e.g. ``key:daily_usd``) is used up until ``reset_at`` (ISO
    8601, UTC): with ``limits.over_budget = "refuse"`` the service answers 429 with both in the message and
    ``Retry-After`` until the reset (by default it answers extractively instead: :mod:`rag.stages.limit`)."""

    def __init__(self, budget: str, reset_at: str, retry_after_s: float) -> None:
        RagError.__init__(self, f"budget {budget} exceeded; it resets at {reset_at}")
        self.limit = budget
        self.reset_at = reset_at
        self.retry_after_s = retry_after_s


class StoreUnavailable(RagError):
    """The request store's database does not answer right now (a restart, a network blip): the service answers 503
    with ``Retry-After``; nothing was stored, so the caller's retry loses nothing."""

    def __init__(self, message: str, retry_after_s: float = 2.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CircuitOpen(RagError):
    """A dependency's circuit breaker is open: it failed repeatedly, calls are refused until ``retry_after_s``."""

    def __init__(self, name: str, retry_after_s: float) -> None:
        super().__init__(
            f"{name} is unavailable (circuit open after repeated failures); retry in {retry_after_s:.0f} s"
        )
        self.name = name
        self.retry_after_s = retry_after_s


class StoreError(RagError):
    """The request store cannot be opened, migrated or written as configured; the message names the database."""


class GuardrailError(RagError):
    """A guardrail cannot be built or run as configured (bad JSON schema, bad business-rules YAML, missing model)."""


class GuardrailModelMismatch(GuardrailError):
    """The injection classifier was trained on another embedder's vectors than the one offered."""
