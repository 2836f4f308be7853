"""Served requests as MLflow traces, and ratings as feedback assessments on them, where MLflow users look.

A sampled share of requests (``RAGOPS_TRACING__SAMPLE_RATE``, off by default) becomes a trace in the MLflow
experiment ``serving``: a root span ``request`` (the question as the chain saw it, the answer, the citations) with one
child span per stage, laid out in the order the stages ran with the milliseconds they took, the retrieval span
carrying the cited chunks (id, source and a text excerpt each, as MLflow retriever documents). A rating given
through ``/v1/feedback`` is logged on the request's trace as a human feedback assessment ``user_rating``. Both are
exported by one background thread from the request store's records after the request has ended: the request path
only enqueues (bounded: past ``queue_size`` a trace is dropped and counted, never waited for), so tracing costs
microseconds per request.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from rag.review import ReviewLabel
    from rag.settings import RagSettings
    from rag.store.records import RequestRecord

logger = logging.getLogger(__name__)

EXPERIMENT = "serving"
REQUEST_TAG = "ragops.request_id"
STAGE_SPAN_TYPES = {"retrieve": "RETRIEVER", "answer": "LLM", "embed": "EMBEDDING"}
EXCERPT_CHARS = 1000
"""Characters of each cited chunk's text kept on the retrieval span."""


class TracingSettings(BaseModel):
    """``RAGOPS_TRACING__*``: which share of served requests become MLflow traces."""

    sample_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of requests traced in MLflow (0: off, 1: every request)."
    )
    queue_size: int = Field(default=1000, ge=1, description="Traces waiting for export; past it new ones are dropped.")


@dataclass(frozen=True)
class _Rating:
    request_id: str
    rating: str


@dataclass(frozen=True)
class _Label:
    request_id: str
    label: ReviewLabel


class TraceExporter:
    """A background thread that writes sampled request records as MLflow traces (see the module docstring)."""

    def __init__(self, settings: RagSettings, config: TracingSettings, *, seed: int | None = None) -> None:
        self.settings = settings
        self.config = config
        self.dropped = 0
        self.exported = 0
        self._random = random.Random(seed)
        self._queue: queue.Queue[RequestRecord | _Rating | _Label | None] = queue.Queue(maxsize=config.queue_size)
        self.labels_logged = 0
        self._traced: dict[str, str] = {}  # request id -> trace id (bounded below)
        self._thread = threading.Thread(target=self._run, name="ragops-trace-exporter", daemon=True)
        self._thread.start()

    def submit(self, record: RequestRecord) -> None:
        """Trace ``record`` if it is sampled (never blocks)."""
        if self._random.random() >= self.config.sample_rate:
            return
        self._put(record)

    def rate(self, request_id: str, rating: str) -> None:
        """Log a rating on the request's trace, if it was traced (never blocks)."""
        self._put(_Rating(request_id, rating))

    def label(self, request_id: str, label: ReviewLabel) -> None:
        """Log a reviewer's label as expectations on the request's trace, if it was traced (never blocks)."""
        self._put(_Label(request_id, label))

    def close(self, timeout_s: float = 10.0) -> None:
        """Export what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout=timeout_s)

    def _put(self, item: RequestRecord | _Rating | _Label) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        experiment_id: str | None = None
        while (item := self._queue.get()) is not None:
            try:
                if experiment_id is None:
                    from pipelines.tracking import ensure_experiment

                    experiment_id = ensure_experiment(self.settings, EXPERIMENT)
                if isinstance(item, _Rating):
                    self._log_rating(item)
                elif isinstance(item, _Label):
                    self._log_label(item, experiment_id)
                else:
                    self._export(item, experiment_id)
            except Exception:  # an unreachable MLflow must never take the service down
                logger.warning("trace export failed", extra={"experiment": EXPERIMENT}, exc_info=True)

    def _export(self, record: RequestRecord, experiment_id: str) -> None:
        import mlflow

        total_ms = record.timings_ms.get("total", sum(v for k, v in record.timings_ms.items() if k != "total"))
        end_ns = int(record.at * 1e9)
        start_ns = end_ns - int(total_ms * 1e6)
        root = mlflow.start_span_no_context(
            "request",
            span_type="CHAIN",
            inputs={"question": record.question, "route": record.route},
            attributes={"stack_version": str(record.stack_version), "index_version": str(record.index_version)},
            tags={REQUEST_TAG: record.request_id, "ragops.principal": record.principal},
            experiment_id=experiment_id,
            start_time_ns=start_ns,
        )
        at = start_ns
        for stage, ms in record.timings_ms.items():
            if stage == "total":
                continue
            retrieval = stage == "retrieve"
            span = mlflow.start_span_no_context(
                stage,
                span_type=STAGE_SPAN_TYPES.get(stage, "UNKNOWN"),
                parent_span=root,
                inputs={"query": record.question} if retrieval else None,
                start_time_ns=at,
            )
            at += int(ms * 1e6)
            span.end(outputs=retrieved_documents(record) if retrieval else None, end_time_ns=min(at, end_ns))
        root.end(
            outputs={
                "answer": record.answer,
                "abstained": record.abstained,
                "blocked": record.blocked,
                "status": record.status,
                "verdicts": dict(record.verdicts),
            },
            end_time_ns=end_ns,
        )
        mlflow.flush_trace_async_logging()  # this thread is already off the request path: write it now
        self._traced[record.request_id] = root.trace_id
        if len(self._traced) > 10 * self.config.queue_size:
            self._traced.pop(next(iter(self._traced)))
        self.exported += 1

    def _log_rating(self, item: _Rating) -> None:
        import mlflow
        from mlflow.entities import AssessmentSource

        trace_id = self._traced.get(item.request_id)
        if trace_id is None:
            return  # not sampled (or traced by another worker): the store keeps the rating anyway
        mlflow.log_feedback(
            trace_id=trace_id,
            name="user_rating",
            value=item.rating == "up",
            source=AssessmentSource(source_type="HUMAN", source_id="playground/api"),
            rationale=f"thumbs {item.rating}",
        )

    def _trace_of(self, request_id: str, experiment_id: str) -> str | None:
        """The trace of ``request_id``: exported by this process, or found by its tag (another worker, a restart)."""
        known = self._traced.get(request_id)
        if known is not None:
            return known
        from mlflow import MlflowClient

        found = MlflowClient().search_traces(
            locations=[experiment_id], filter_string=f"tag.`{REQUEST_TAG}` = '{request_id}'", max_results=1
        )
        return str(found[0].info.trace_id) if found else None

    def _log_label(self, item: _Label, experiment_id: str) -> None:
        import mlflow
        from mlflow.entities import AssessmentSource

        trace_id = self._trace_of(item.request_id, experiment_id)
        if trace_id is None:
            return  # not sampled: the review queue keeps the label anyway
        label = item.label
        source = AssessmentSource(source_type="HUMAN", source_id=label.reviewer)
        mlflow.log_expectation(trace_id=trace_id, name="review_verdict", value=label.verdict, source=source)
        if label.right_answer:
            mlflow.log_expectation(trace_id=trace_id, name="expected_response", value=label.right_answer, source=source)
        if label.relevant_chunk_ids:
            mlflow.log_expectation(
                trace_id=trace_id,
                name="relevant_chunk_ids",
                value=list(label.relevant_chunk_ids),
                source=source,
            )
        self.labels_logged += 1


def retrieved_documents(record: RequestRecord) -> list[dict[str, object]]:
    """The retrieval span's outputs: the chunks the answer cited, as MLflow's retriever documents
    (``mlflow.entities.Document``: ``page_content``, ``metadata`` with ``doc_uri``, ``id``), the shape the Traces
    view renders as a document list and MLflow's retrieval judges read. Only the cited chunks travel with a record;
    each text is cut to :data:`EXCERPT_CHARS` so a trace stays small."""
    from mlflow.entities import Document

    return [
        Document(
            page_content=(c.text or "")[:EXCERPT_CHARS],
            metadata={"doc_uri": c.source, "doc_id": c.doc_id, "title": c.title, "citation": c.n},
            id=c.chunk_id,
        ).to_dict()
        for c in record.citations
    ]


def wait_exported(exporter: TraceExporter, count: int, timeout_s: float = 30.0) -> bool:
    """Poll until ``exporter`` has exported ``count`` traces (for tests and benchmarks)."""
    deadline = time.monotonic() + timeout_s
    while exporter.exported < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return exporter.exported >= count
