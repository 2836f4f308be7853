"""Settings of rate limiting, admission control and circuit breaking (``RAGOPS_LIMITS__*`` once assembled).

A plain pydantic model like the other groups of :class:`pipelines.settings.Settings`, which reads the environment
once for all of them: assembled there as ``limits: LimitsSettings``, ``RAGOPS_LIMITS__REQUESTS_PER_MINUTE=600``
sets a field. Rate limits are off by default (``None``): a local platform has one user; admission control is on,
because a bounded queue is what keeps latency bounded under any load.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class LimitsSettings(BaseModel):
    """Per-key and per-tenant quotas (per minute) and budgets (per day and month, in the request store: they hold
    across workers and restarts), the admission queue, and the circuit breakers' thresholds."""

    redis_url: str | None = Field(
        default=None, description="Shared limit storage for all workers (redis://host:port/db); None: per worker."
    )
    strategy: Literal["sliding-window-counter", "moving-window", "fixed-window"] = Field(
        default="sliding-window-counter",
        description="The `limits` strategy: sliding-window-counter is O(1) per key even for token costs.",
    )
    requests_per_minute: int | None = Field(default=None, ge=1, description="Requests per API key per minute.")
    tokens_per_minute: int | None = Field(default=None, ge=1, description="Tokens per API key per minute.")
    tenant_requests_per_minute: int | None = Field(default=None, ge=1, description="Requests per tenant per minute.")
    tenant_tokens_per_minute: int | None = Field(default=None, ge=1, description="Tokens per tenant per minute.")
    redis_retry_s: float = Field(
        default=5.0, gt=0, description="While Redis is down, how often to try it again (limits stay per worker)."
    )
    redis_timeout_s: float = Field(default=0.25, gt=0, description="Connect and read timeout of the Redis storage.")
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="Requests processed at once per worker (a stream holds its slot until it ends). Unset: sized to "
        "the served stack, cpu_concurrency when it answers without an LLM, llm_concurrency when an LLM answers.",
    )
    cpu_concurrency: int = Field(
        default=4,
        ge=1,
        description="Slots per worker for a stack answered without an LLM: retrieval and the extractive answer are "
        "CPU-bound, so more in flight than about two per core only lengthens each (bench/load.py).",
    )
    llm_concurrency: int = Field(
        default=16, ge=1, description="Slots per worker for a stack an LLM answers: its requests mostly wait."
    )
    max_queue: int = Field(default=64, ge=0, description="Requests waiting for a slot; past it, shed with 503.")
    queue_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description="Longest wait for a slot behind a queue that drains (a burst) before shedding with 503 and "
        "Retry-After.",
    )
    overload_wait_s: float = Field(
        default=0.1,
        gt=0,
        description="Longest wait for a slot behind a standing queue (one that has not emptied for "
        "overload_interval_s: sustained overload), before shedding with 503 and Retry-After; keeps the latency of "
        "admitted requests near its unloaded value (CoDel's rule).",
    )
    overload_interval_s: float = Field(
        default=0.1, gt=0, description="How long the queue must stay non-empty to count as standing."
    )
    breaker_failures: int = Field(default=5, ge=1, description="Consecutive failures that open a circuit breaker.")
    breaker_reset_s: float = Field(default=30.0, gt=0, description="How long an open breaker refuses calls.")
    key_daily_tokens: int | None = Field(default=None, ge=1, description="Tokens per API key per UTC day.")
    key_monthly_tokens: int | None = Field(default=None, ge=1, description="Tokens per API key per UTC month.")
    key_daily_usd: float | None = Field(default=None, gt=0, description="Dollars per API key per UTC day.")
    key_monthly_usd: float | None = Field(default=None, gt=0, description="Dollars per API key per UTC month.")
    tenant_daily_tokens: int | None = Field(default=None, ge=1, description="Tokens per tenant per UTC day.")
    tenant_monthly_tokens: int | None = Field(default=None, ge=1, description="Tokens per tenant per UTC month.")
    tenant_daily_usd: float | None = Field(default=None, gt=0, description="Dollars per tenant per UTC day.")
    tenant_monthly_usd: float | None = Field(default=None, gt=0, description="Dollars per tenant per UTC month.")
    budget_soft_fraction: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Share of a budget past which a soft-limit alert is raised.",
    )
    over_budget: Literal["extractive", "refuse"] = Field(
        default="extractive",
        description="A request whose key or tenant has used up a budget: 'extractive' answers it without the LLM "
        "(no spend, nothing charged; announced as degraded 'llm_over_budget' with a notice naming the budget and "
        "its reset); 'refuse' answers 429 (budget_exceeded, with Retry-After until the reset).",
    )
