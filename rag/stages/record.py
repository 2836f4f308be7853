"""The last stage: the request's facts are written where monitoring, feedback and review read them.

The service's recorder, :class:`StoreRecorder`, turns the finished :class:`RequestContext` into one frozen
:class:`rag.store.RequestRecord` (principal and tenant, stack and index version, stage timings, tokens, cost,
guardrail verdicts, abstention, cited chunks with their text, request id), hands it to the
:class:`rag.store.RequestStore` (a bounded-queue put: the database write happens on the store's own thread) and
updates the service's Prometheus metrics from the same record, so the store and ``/metrics`` can never disagree on
what a request was. Requests that never reach this stage (an error, a client that left a stream) are recorded by
:meth:`StoreRecorder.record_unfinished`, called by the query service.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import TYPE_CHECKING, Protocol

from rag.feedback import CitedChunk
from rag.review import ReviewSettings, queue_reasons
from rag.stages.context import RequestContext
from rag.store.records import RequestRecord

if TYPE_CHECKING:
    from rag.monitoring.metrics import ServiceMetrics
    from rag.monitoring.tracing import TraceExporter

_SEVERITY = {"allow": 0, "pass": 0, "flag": 1, "redact": 2, "block": 3}
"""When a check ran more than once (the output check on each streamed sentence), its most severe verdict counts."""


class Recorder(Protocol):
    """Where a finished request goes (the service's request store; evaluation keeps its own table)."""

    def record(self, ctx: RequestContext) -> None:
        """Store the request (must be fast: it runs on the request path)."""
        ...


class RecordSink(Protocol):
    """What the recorder writes to (:class:`rag.store.RequestStore`)."""

    def record(self, item: RequestRecord) -> bool:
        """Queue ``item``; False when it had to be dropped."""
        ...


class RecordStage:
    """Hand the finished request to the recorder, refused requests included."""

    name = "record"
    always = True

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def run(self, ctx: RequestContext) -> None:
        """Record ``ctx``."""
        self.recorder.record(ctx)


def verdicts_by_check(ctx: RequestContext) -> dict[str, str]:
    """Each guardrail check's verdict on the request (the most severe when it ran several times)."""
    out: dict[str, str] = {}
    for v in ctx.verdicts:
        known = out.get(v.name)
        if known is None or _SEVERITY.get(str(v.verdict), 1) > _SEVERITY.get(known, 1):
            out[v.name] = str(v.verdict)
    return out


MAX_STORED_CHARS = 20_000
"""A refused request's question is stored as sent, up to this many characters (validation refused longer ones)."""


def storable(text: object) -> str:
    """``text`` as the store can keep it: a string, valid UTF-8 (a lone surrogate the validate stage refused
    becomes ``?``), at most :data:`MAX_STORED_CHARS`."""
    if not isinstance(text, str):
        return ""
    clipped = text[:MAX_STORED_CHARS]
    return clipped.encode("utf-8", errors="replace").decode("utf-8")


def request_record(
    ctx: RequestContext,
    *,
    stack_version: int | None,
    index_version: int | None,
    status: int = 200,
    error: str | None = None,
    at: float | None = None,
) -> RequestRecord:
    """The store's record of ``ctx`` as it stands (a refused request carries no retrieved text)."""
    answer = ctx.answer
    refused = ctx.refusal is not None
    citations: tuple[CitedChunk, ...] = ()
    if answer is not None and not refused:
        texts = {c.chunk_id: c.text for c in ctx.chunks}
        citations = tuple(
            CitedChunk(c.n, c.chunk_id, c.doc_id, c.title, c.source, texts.get(c.chunk_id)) for c in answer.citations
        )
    return RequestRecord(
        request_id=ctx.request_id,
        at=time.time() if at is None else at,
        principal=ctx.principal.name,
        tenant=ctx.principal.tenant,
        question=storable(ctx.text),
        route=ctx.route,
        status=status,
        error=error,
        stack_name=ctx.engine.config.name,
        stack_version=stack_version,
        index_version=index_version,
        answer=ctx.refusal.text if ctx.refusal else (answer.text if answer else ""),
        abstained=bool(answer and answer.abstained) and not refused,
        blocked=refused,
        timings_ms=ctx.all_timings(),
        prompt_tokens=ctx.usage.prompt_tokens,
        completion_tokens=ctx.usage.completion_tokens,
        cost_usd=ctx.usage.cost_usd,
        verdicts=verdicts_by_check(ctx),
        citations=citations,
        routing=ctx.routing.to_json() if ctx.routing is not None else None,
    )


class StoreRecorder:
    """:class:`Recorder` of the service: the request store plus the Prometheus metrics, for one served stack.

    Args:
        store: The request store (its ``record`` only queues).
        metrics: The service's metrics; None records to the store only.
        tracer: Sampled MLflow traces of the records (None: no tracing).
        stack_version: The served stack's registry version.
        index_version: The index version it reads.
        review: The review queue's rules (:mod:`rag.review`); None queues nothing.
    """

    def __init__(
        self,
        store: RecordSink,
        metrics: ServiceMetrics | None,
        *,
        stack_version: int | None,
        index_version: int | None,
        tracer: TraceExporter | None = None,
        review: ReviewSettings | None = None,
    ) -> None:
        self._review = review
        self._store = store
        self._metrics = metrics
        self._tracer = tracer
        self._stack_version = stack_version
        self._index_version = index_version

    def record(self, ctx: RequestContext) -> None:
        """Write a request that went through the chain (answered or refused by a guardrail), queued for review when
        a rule says so."""
        record = request_record(ctx, stack_version=self._stack_version, index_version=self._index_version)
        if self._review is not None:
            answered = ctx.answer is not None and ctx.refusal is None
            reasons = queue_reasons(
                self._review,
                answered=answered,
                support=ctx.answer.support if ctx.answer is not None and answered else None,
                guardrail_triggered=record.guardrail_triggered,
                draw=random.random(),
            )
            if reasons:
                record = dataclasses.replace(record, review=reasons)
        self._write(ctx, record)

    def record_unfinished(self, ctx: RequestContext, *, status: int, error: str) -> None:
        """Write a request the chain did not finish: an error (``status``/``error`` say which) or, with
        ``error="client_disconnected"``, a stream the client left before its end."""
        record = request_record(
            ctx, stack_version=self._stack_version, index_version=self._index_version, status=status, error=error
        )
        if self._metrics is not None and error == "client_disconnected":
            self._metrics.stream_abandoned_by_client(ctx.route)
        self._write(ctx, record)

    def _write(self, ctx: RequestContext, record: RequestRecord) -> None:
        queued = self._store.record(record)
        if self._tracer is not None:
            self._tracer.submit(record)  # sampled, exported off the request path
        metrics = self._metrics
        if metrics is None:
            return
        llm = ctx.engine.config.llm
        if ctx.engine.config.answerer.kind == "llm" and llm.model:
            metrics.observe_record(record, model=llm.model, provider="openai")
        else:
            metrics.observe_record(record)
        if ctx.first_token_ms is not None and record.status < 400:
            metrics.observe_stream(
                ctx.route,
                first_token_s=ctx.first_token_ms / 1000.0,
                output_tokens=record.completion_tokens,
                duration_s=record.timings_ms.get("total", ctx.first_token_ms) / 1000.0,
            )
        if ctx.degraded:
            metrics.observe_degraded(ctx.degraded)
        if not queued:
            metrics.record_dropped()
