"""What the request store keeps about one request, and what it answers about a window of them.

Frozen dataclasses cross the boundary in both directions: the record stage builds a :class:`RequestRecord` and hands
it over (the store serialises it on its own thread, off the request path); reads return the same type, with the
feedback joined in. :meth:`RequestRecord.to_snapshot` gives feedback the :class:`rag.feedback.RequestSnapshot` it
turns into training pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rag.feedback import CitedChunk, Rating, RequestSnapshot

PASSING = frozenset({"allow", "pass"})
"""Guardrail verdicts that mean the check let the request through untouched."""


@dataclass(frozen=True)
class Feedback:
    """The rating a request received (the last one given; a changed mind replaces it)."""

    rating: Rating
    comment: str | None
    at: float


@dataclass(frozen=True)
class RequestRecord:
    """One request as the service handled it.

    ``question`` is the text after the guardrails' redaction (the store never sees what they removed). A refused
    request is recorded too: ``status`` and ``error`` (a low-cardinality kind such as ``bad_query``) say why, and
    ``blocked`` is True when a guardrail refused it. ``timings_ms`` has one entry per stage that ran, plus
    ``total`` when known. ``verdicts`` maps a guardrail check to its verdict (``pass``, ``redact``, ``block``...).
    ``feedback`` is only ever set on records read back from the store. ``routing`` is a tiered stack's
    :meth:`rag.routing.RoutingTrace.to_json` (which tier answered, each attempt and why it was escalated).
    ``review`` is why the record stage queued the request for human review (:mod:`rag.review`); written to the
    review queue with the record, never a column of the request.
    """

    request_id: str
    at: float
    principal: str
    question: str
    route: str = "/v1/query"
    status: int = 200
    error: str | None = None
    tenant: str | None = None
    stack_name: str | None = None
    stack_version: int | None = None
    index_version: int | None = None
    answer: str = ""
    abstained: bool = False
    blocked: bool = False
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    verdicts: Mapping[str, str] = field(default_factory=dict)
    citations: tuple[CitedChunk, ...] = ()
    feedback: Feedback | None = None
    routing: Mapping[str, Any] | None = None
    review: tuple[str, ...] = ()

    @property
    def guardrail_triggered(self) -> bool:
        """A guardrail check did something (flagged, redacted or blocked) rather than allow the request."""
        return self.blocked or any(v not in PASSING for v in self.verdicts.values())

    @property
    def cited_chunk_ids(self) -> tuple[str, ...]:
        """The ids of the chunks the answer cited, in citation order."""
        return tuple(c.chunk_id for c in self.citations)

    @property
    def cited_doc_ids(self) -> tuple[str, ...]:
        """The documents the answer cited, in citation order, each once."""
        return tuple(dict.fromkeys(c.doc_id for c in self.citations))

    def to_snapshot(self) -> RequestSnapshot | None:
        """What feedback needs of an answered request; None when the request was not answered from a stack."""
        if self.stack_version is None or self.index_version is None:
            return None
        return RequestSnapshot(
            request_id=self.request_id,
            at=self.at,
            question=self.question,
            answer=self.answer,
            abstained=self.abstained,
            stack_version=self.stack_version,
            stack_name=self.stack_name or "",
            index_version=self.index_version,
            citations=self.citations,
        )

    def to_row(self) -> dict[str, Any]:
        """The ``requests`` table row (feedback columns left out: they are written by ``set_feedback``)."""
        total = self.timings_ms.get("total")
        return {
            "request_id": self.request_id,
            "at": self.at,
            "route": self.route,
            "status": self.status,
            "error": self.error,
            "principal": self.principal,
            "tenant": self.tenant,
            "stack_name": self.stack_name,
            "stack_version": self.stack_version,
            "index_version": self.index_version,
            "question": self.question,
            "answer": self.answer,
            "abstained": self.abstained,
            "blocked": self.blocked,
            "total_ms": float(total) if total is not None else None,
            "timings": dict(self.timings_ms),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "verdicts": dict(self.verdicts),
            "citations": [c.to_json() for c in self.citations],
            "guardrail_triggered": self.guardrail_triggered,
            "routing": dict(self.routing) if self.routing is not None else None,
        }

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> RequestRecord:
        """A record read back from the ``requests`` table."""
        rating = row["feedback_rating"]
        feedback = (
            Feedback(rating="up" if rating == "up" else "down", comment=row["feedback_comment"], at=row["feedback_at"])
            if rating is not None
            else None
        )
        return cls(
            request_id=row["request_id"],
            at=row["at"],
            route=row["route"],
            status=row["status"],
            error=row["error"],
            principal=row["principal"],
            tenant=row["tenant"],
            stack_name=row["stack_name"],
            stack_version=row["stack_version"],
            index_version=row["index_version"],
            question=row["question"],
            answer=row["answer"],
            abstained=bool(row["abstained"]),
            blocked=bool(row["blocked"]),
            timings_ms={str(k): float(v) for k, v in (row["timings"] or {}).items()},
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            cost_usd=row["cost_usd"],
            verdicts={str(k): str(v) for k, v in (row["verdicts"] or {}).items()},
            citations=tuple(
                CitedChunk(
                    n=int(c["n"]),
                    chunk_id=str(c["chunk_id"]),
                    doc_id=str(c["doc_id"]),
                    title=str(c.get("title") or ""),
                    source=str(c.get("source") or ""),
                    text=c["text"] if isinstance(c.get("text"), str) else None,
                )
                for c in (row["citations"] or ())
            ),
            feedback=feedback,
            routing=row.get("routing"),
        )


@dataclass(frozen=True)
class WindowStats:
    """Aggregates over the requests of ``[since, until)``: what the monitor compares against its thresholds.

    Shares are of ``requests`` (0.0 for an empty window); ``mean_total_ms`` and the latency percentiles
    (``p50_ms``/``p95_ms``/``p99_ms``, exact, of the requests' ``total``; ``sd_total_ms`` their sample standard
    deviation) are None when no request in the window recorded a total. ``cost_sq_usd`` is the sum of squared
    costs (for the cost's spread).
    """

    since: float
    until: float
    requests: int
    errors: int
    blocked: int
    abstained: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    feedback_up: int
    feedback_down: int
    mean_total_ms: float | None
    guardrail_triggered: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    sd_total_ms: float | None = None
    cost_sq_usd: float = 0.0

    @property
    def cost_sd_usd(self) -> float:
        """Sample standard deviation of the requests' cost (0.0 below two requests)."""
        n = self.requests
        if n < 2:
            return 0.0
        mean = self.cost_usd / n
        return max((self.cost_sq_usd - n * mean * mean) / (n - 1), 0.0) ** 0.5

    @property
    def guardrail_trigger_share(self) -> float:
        """Requests on which a guardrail check flagged, redacted or blocked something."""
        return self.guardrail_triggered / self.requests if self.requests else 0.0

    @property
    def error_share(self) -> float:
        """Requests answered with a 5xx status."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def abstention_share(self) -> float:
        """Requests the answerer declined to answer."""
        return self.abstained / self.requests if self.requests else 0.0

    @property
    def thumbs_down_share(self) -> float:
        """Of the rated requests, the share rated down."""
        rated = self.feedback_up + self.feedback_down
        return self.feedback_down / rated if rated else 0.0

    @property
    def cost_per_request(self) -> float:
        """Mean cost in USD."""
        return self.cost_usd / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class StoreStats:
    """The background writer's counters since the store was opened (exported as metrics by the service)."""

    queued: int
    written: int
    dropped: int
    failed: int
