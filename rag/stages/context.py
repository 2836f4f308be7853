"""The typed state one request carries through the stages, and what a stage may end it with.

A request is one mutable :class:`RequestContext` owned by one task: every stage reads what earlier stages left and
adds its own part (the vector, the chunks, the answer, verdicts, usage, its milliseconds). Everything a stage hands
to code outside the chain is frozen (:class:`Usage`, :class:`Refusal`, the guardrails' verdicts).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rag.types import Answer, RetrievedChunk

if TYPE_CHECKING:
    import numpy as np

    from rag.engine import RagEngine
    from rag.guardrails.types import PreparedInput, Verdict
    from rag.routing import RoutePlan, RoutingTrace

REFUSAL_TEXT = "I can't help with that request."
"""What a blocked request is answered with (never any retrieved text)."""


@dataclass(frozen=True)
class Principal:
    """Who asks. ``tenant`` and ``groups`` bound what retrieval may return (filters may only narrow them)."""

    name: str = "anonymous"
    role: str = "reader"
    tenant: str | None = None
    groups: tuple[str, ...] = ()

    @property
    def identity(self) -> str:
        """Who this is across tenants: names are chosen per tenant (two tenants may both have an ``alice``), so a
        per-caller budget is keyed by tenant and name together, never by the name alone."""
        return f"{self.tenant}/{self.name}" if self.tenant else self.name


ANONYMOUS = Principal()
"""No credential (the public routes): a reader without tenant, who by :mod:`rag.access` sees only untenanted
documents."""

LOCAL = Principal(name="local", role="admin")
"""The one in-process trusted principal: the deployment's operator acting on the machine that holds ``RAGOPS_HOME``
without presenting a credential. Evaluation runs the chain as it, CLI commands act as it, and a service with
authentication switched off (loopback only, :func:`rag.security.gate.check_exposure`) treats every caller as it. By
:mod:`rag.access` it sees every tenant and every ACL (its scope is :data:`rag.access.UNRESTRICTED`); audit records
name the OS user running a command (``flows.cli.common.actor``) rather than this placeholder."""


@dataclass(frozen=True)
class Usage:
    """Tokens of one answered request and what they cost."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion."""
        return self.prompt_tokens + self.completion_tokens


DEGRADATIONS: dict[str, str] = {
    "llm_fallback": "the LLM failed or timed out; the extractive answer is shown",
    "llm_over_budget": "the caller's budget is used up; the extractive answer is shown (no LLM call, nothing charged)",
    "cache_unavailable": "the answer cache's store is unreachable; answered without the cache",
    "limits_per_worker": "the shared rate-limit store is unreachable; quotas are counted per worker",
    "registry_unreachable": "the stack registry (MLflow) is unreachable; the last loaded stack answers",
}
"""Ways a request is served in a degraded mode instead of failing: kind -> what it means. Each is announced in the
response (``degraded``) and counted in ``ragops_degraded_requests_total{kind}``."""


@dataclass(frozen=True)
class OverBudget:
    """A used-up budget (``key:daily_usd``) that the request is answered past, extractively and at no charge, until
    ``reset_at`` (ISO 8601, UTC): set by the budget stage when ``limits.over_budget`` is ``"extractive"``, acted on
    by the answer stage (a cache hit, which costs nothing either, is served as usual)."""

    budget: str
    reset_at: str

    @property
    def notice(self) -> str:
        """What the caller is told instead of the 429 it would otherwise get."""
        return f"Budget {self.budget} is used up until {self.reset_at}; this is the extractive answer."


@dataclass(frozen=True)
class Refusal:
    """Why a stage ended the request before an answer was produced (a guardrail block)."""

    check: str
    reason: str
    text: str = REFUSAL_TEXT


@dataclass
class RequestContext:
    """One request on its way through the chain.

        ``question`` is what the caller sent (validated); ``text`` is what every later stage works on: the question
        after the input guard normalised it and redacted what must not travel further (retrieval, the LLM, the logs
        and feedback all see ``text``). ``ranking`` is the whole retrieved list (evaluation asks for a deeper one than
        the answerer gets: ``depth``); ``chunks`` are the ``top_k`` handed to the answerer. ``routing`` is a routed
    stack's record of the tiers tried (:mod:`rag.routing`). ``route`` is the HTTP route
    template the request came in on (a metrics label and a column of the request store). ``over_budget`` is the
    caller's used-up budget, when the request is to be answered past it (extractively, at no charge).
    ``cache_scope`` is the answer cache's key for what the request may see (:func:`rag.cache.scope_key`), set by the
    first cache stage once the request is validated.
    """

    engine: RagEngine
    question: str
    filters: dict[str, list[str]] | None = None
    top_k: int | None = None
    depth: int | None = None
    principal: Principal = ANONYMOUS
    route: str = "/v1/query"
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    text: str = ""
    prepared: PreparedInput | None = None
    vector: np.ndarray | None = None
    ranking: list[RetrievedChunk] = field(default_factory=list)
    chunks: list[RetrievedChunk] = field(default_factory=list)
    answer: Answer | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    refusal: Refusal | None = None
    usage: Usage = field(default_factory=Usage)
    timings: dict[str, float] = field(default_factory=dict)
    first_token_ms: float | None = None
    context_tokens_saved: int | None = None
    cache_hit: str | None = None
    cache_scope: str | None = None
    route_plan: RoutePlan | None = None
    routing: RoutingTrace | None = None
    notice: str | None = None
    degraded: list[str] = field(default_factory=list)
    over_budget: OverBudget | None = None
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if not self.text:
            self.text = self.question

    @property
    def ended(self) -> bool:
        """A stage refused the request or answered it from the cache: the remaining stages that do not always
        run are skipped."""
        return self.refusal is not None or self.cache_hit is not None

    def degrade(self, kind: str) -> None:
        """Note that the request was served in the degraded mode ``kind`` (a key of :data:`DEGRADATIONS`)."""
        if kind not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {kind!r}")
        if kind not in self.degraded:
            self.degraded.append(kind)

    @property
    def k(self) -> int:
        """Chunks for the answerer: the request's ``top_k`` or the stack's."""
        return self.top_k if self.top_k is not None else self.engine.config.retrieval.top_k

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Record a stage's milliseconds (added to, so a stage that runs in parts is timed whole)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = round(self.timings.get(stage, 0.0) + (time.perf_counter() - start) * 1000, 3)

    def total_ms(self) -> float:
        """Milliseconds since the request started."""
        return round((time.perf_counter() - self.started) * 1000, 3)

    def all_timings(self) -> dict[str, float]:
        """Every stage's milliseconds plus ``total``."""
        return {**self.timings, "total": self.total_ms()}
