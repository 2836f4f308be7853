"""The query service's Prometheus metrics, and the exposition ``GET /metrics`` returns.

One :class:`ServiceMetrics` per app, holding its collectors in its own ``CollectorRegistry`` (not the process-wide
default): two apps in one process (tests, a blue/green pair) never collide, and nothing is registered at import.

Names follow Prometheus conventions (base units, ``_total`` counters, ``_info`` for the constant-1 info gauge) and,
for the model call, the OpenTelemetry ``gen_ai`` semantic conventions as the OpenTelemetry-to-Prometheus mapping
renders them (``gen_ai.client.token.usage`` -> ``gen_ai_client_token_usage``, ``gen_ai.client.operation.duration``
in seconds -> ``gen_ai_client_operation_duration_seconds``, attribute dots -> underscores), with the bucket
boundaries the conventions advise. Labels stay low-cardinality: routes are templates, stages and checks are names
from the code, never a question, a user or a request id.

Several worker processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set *before the process starts* (prometheus-client
picks its value store at import), every worker writes its samples to files in that folder and :meth:`render` merges
all workers' files, so any worker answers a scrape with the service's totals. The folder must be emptied before
the service starts (stale files from an earlier run would be added in), and a supervisor that restarts workers
should call :func:`mark_process_dead` for each exited one (its live gauges are then dropped).

Usage example::

    metrics = ServiceMetrics()
    metrics.set_stack(stack_version=7, index_version=3, embedder="3f2a9c1d")
    metrics.observe_record(record)            # once per request, from the record stage
    body, content_type = metrics.render(request.headers.get("accept"))
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rag.store.records import RequestRecord

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
"""Seconds. 1.0 is a bucket boundary because the latency SLO is "answered within 1 s" (the burn-rate rules count
the requests above it from ``le="1"``)."""

STAGE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds; stages range from microseconds (an empty rate limit) to seconds (an LLM answer)."""

TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
"""The OpenTelemetry gen_ai advice for ``gen_ai.client.token.usage``."""

OPERATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
"""The OpenTelemetry gen_ai advice for ``gen_ai.client.operation.duration``."""

TOKENS_PER_SECOND_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

GEN_AI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")


class ServiceMetrics:
    """Every metric the query service exports.

    Args:
        multiprocess_dir: Folder shared by the service's worker processes; defaults to ``$PROMETHEUS_MULTIPROC_DIR``
            (unset: one process, samples kept in memory).
    """

    def __init__(self, *, multiprocess_dir: Path | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        env_dir = os.environ.get(MULTIPROC_ENV)
        self.multiprocess_dir = multiprocess_dir or (Path(env_dir) if env_dir else None)
        self.registry = CollectorRegistry(auto_describe=True)
        # Multi-process: collectors write to the shared files and are collected from them at render time;
        # registering them as well would count this process twice.
        registry = None if self.multiprocess_dir else self.registry
        self._stack_lock = threading.Lock()
        self._stack_labels: tuple[str, str, str, str] | None = None

        self.requests = Counter(
            "ragops_requests", "Requests handled, by route template and HTTP status.", ["route", "status"],
            registry=registry,
        )  # fmt: skip
        self.request_duration = Histogram(
            "ragops_request_duration_seconds",
            "Time from receiving a request to its response (the first byte of a stream), by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_duration = Histogram(
            "ragops_stage_duration_seconds", "Time spent in each request stage.", ["stage"],
            buckets=STAGE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used per request (OpenTelemetry gen_ai.client.token.usage), input (prompt) and output.",
            [*GEN_AI_LABELS, "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of calls to the answering model (OpenTelemetry gen_ai.client.operation.duration).",
            [*GEN_AI_LABELS, "error_type"],
            buckets=OPERATION_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "ragops_time_to_first_token_seconds",
            "Streamed answers: time from the request to the first answer token sent.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens_per_second = Histogram(
            "ragops_stream_output_tokens_per_second",
            "Streamed answers: output tokens per second after the first token.",
            ["route"],
            buckets=TOKENS_PER_SECOND_BUCKETS,
            registry=registry,
        )
        self.cost = Counter("ragops_cost_usd", "Cost of answering, in US dollars.", registry=registry)
        self.cache = Counter(
            "ragops_cache_requests", "Answer cache lookups by result (hit or miss).", ["result"], registry=registry
        )
        self.cache_backend_errors = Counter(
            "ragops_cache_backend_errors",
            "Answer cache operations that failed because its Redis was unreachable (the request went uncached).",
            registry=registry,
        )
        self.guardrail_verdicts = Counter(
            "ragops_guardrail_verdicts", "Guardrail verdicts by check and verdict.", ["check", "verdict"],
            registry=registry,
        )  # fmt: skip
        self.abstentions = Counter(
            "ragops_abstentions", "Answers the answerer declined to give (not enough support).", ["route"],
            registry=registry,
        )  # fmt: skip
        self.feedback = Counter("ragops_feedback", "Ratings received, up or down.", ["rating"], registry=registry)
        self.stream_abandoned = Counter(
            "ragops_stream_abandoned", "Streamed answers the client disconnected from before the end.", ["route"],
            registry=registry,
        )  # fmt: skip
        self.errors = Counter("ragops_errors", "Errors by kind.", ["kind"], registry=registry)
        self.degraded = Counter(
            "ragops_degraded_requests",
            "Requests served in a degraded mode (LLM fallback, cache or limit store down, registry down), by kind.",
            ["kind"],
            registry=registry,
        )
        self.budget_soft = Counter(
            "ragops_budget_soft_limit", "Budgets (key or tenant, daily or monthly) past their soft limit.", ["budget"],
            registry=registry,
        )  # fmt: skip
        self.records_dropped = Counter(
            "ragops_records_dropped", "Request records the request store could not queue (it was full or closed).",
            registry=registry,
        )  # fmt: skip
        self.batcher_queue_depth = Gauge(
            "ragops_batcher_queue_depth", "Questions waiting for the retrieval batcher.",
            multiprocess_mode="livesum", registry=registry,
        )  # fmt: skip
        self.stack_info = Gauge(
            "ragops_stack_info",
            "The stack being served (value 1; 0 for one a worker no longer serves).",
            ["stack_name", "stack_version", "index_version", "embedder"],
            multiprocess_mode="livemax",
            registry=registry,
        )

    # -- what the request stages call ------------------------------------------------------------------------------

    def observe_record(self, record: RequestRecord, *, model: str = "extractive", provider: str = "ragops") -> None:
        """Everything one request's record says: request count and latency, stage times, tokens, cost,
        guardrail verdicts, abstention and error kind. Called once per request by the record stage.

        ``model``/``provider`` label the token usage (``gen_ai_request_model``, ``gen_ai_provider_name``): the
        stack's answering model, e.g. ``gpt-4o-mini``/``openai``, or the extractive answerer.
        """
        route = record.route
        self.requests.labels(route, str(record.status)).inc()
        total = record.timings_ms.get("total")
        if total is not None:
            self.request_duration.labels(route).observe(total / 1000.0)
        for stage, ms in record.timings_ms.items():
            if stage != "total":
                self.stage_duration.labels(stage).observe(ms / 1000.0)
        if record.prompt_tokens or record.completion_tokens:
            self.token_usage.labels("chat", provider, model, "input").observe(record.prompt_tokens)
            self.token_usage.labels("chat", provider, model, "output").observe(record.completion_tokens)
        if record.cost_usd:
            self.cost.inc(record.cost_usd)
        for check, verdict in record.verdicts.items():
            self.guardrail_verdicts.labels(check, verdict).inc()
        if record.abstained:
            self.abstentions.labels(route).inc()
        if record.error:
            self.errors.labels(record.error).inc()

    def observe_unserved(self, route: str, *, status: int, kind: str) -> None:
        """A request refused before it had a stack to run on (no champion yet, the stack cannot load): it has no
        record, but it is a request and an error all the same."""
        self.requests.labels(route, str(status)).inc()
        self.errors.labels(kind).inc()

    def observe_model_call(
        self, duration_s: float, *, model: str, provider: str, error_type: str | None = None
    ) -> None:
        """One call to the answering model (an LLM), successful or not (``error_type`` e.g. ``timeout``)."""
        self.operation_duration.labels("chat", provider, model, error_type or "").observe(duration_s)

    def observe_stream(self, route: str, *, first_token_s: float, output_tokens: int, duration_s: float) -> None:
        """A streamed answer that reached its end: time to first token and output tokens per second after it."""
        self.time_to_first_token.labels(route).observe(first_token_s)
        generating = duration_s - first_token_s
        if output_tokens > 1 and generating > 0:
            self.tokens_per_second.labels(route).observe((output_tokens - 1) / generating)

    def stream_abandoned_by_client(self, route: str) -> None:
        """The client went away before a streamed answer ended."""
        self.stream_abandoned.labels(route).inc()

    def observe_cache(self, *, hit: bool) -> None:
        """One answer-cache lookup."""
        self.cache.labels("hit" if hit else "miss").inc()

    def observe_cache_backend_error(self) -> None:
        """The shared answer cache's Redis failed one operation (the request was served without the cache)."""
        self.cache_backend_errors.inc()

    def observe_feedback(self, rating: str) -> None:
        """A rating was recorded (``up`` or ``down``)."""
        self.feedback.labels(rating).inc()

    def observe_degraded(self, kinds: Sequence[str]) -> None:
        """Count one request served in each of the degraded modes ``kinds``."""
        for kind in kinds:
            self.degraded.labels(kind=kind).inc()

    def observe_error(self, kind: str) -> None:
        """An error outside a request's record (a stack reload that failed, a store write that failed)."""
        self.errors.labels(kind).inc()

    def budget_soft_limit(self, budget: str) -> None:
        """A key's or tenant's budget passed its soft limit (counted once per window and worker; alert on it)."""
        self.budget_soft.labels(budget=budget).inc()

    def record_dropped(self) -> None:
        """The request store refused a record (``RequestStore.record`` returned False)."""
        self.records_dropped.inc()

    def set_batcher_queue_depth(self, depth: int) -> None:
        """Questions currently waiting for the retrieval batcher."""
        self.batcher_queue_depth.set(depth)

    def set_stack(self, *, stack_name: str, stack_version: int, index_version: int, embedder: str) -> None:
        """The stack now served (call at start-up and on every switch)."""
        labels = (stack_name, str(stack_version), str(index_version), embedder)
        with self._stack_lock:
            previous, self._stack_labels = self._stack_labels, labels
            if previous == labels:
                return
            if previous is not None:
                if self.multiprocess_dir:
                    self.stack_info.labels(*previous).set(0)  # a file's samples cannot be removed
                else:
                    self.stack_info.remove(*previous)
            self.stack_info.labels(*labels).set(1)

    # -- exposition ------------------------------------------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition for ``GET /metrics`` and its content type (OpenMetrics when the scraper asks for it).

        In multi-process mode the samples of every worker are merged from ``multiprocess_dir``.
        """
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        if self.multiprocess_dir is None:
            return encoder(self.registry), content_type
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self.multiprocess_dir))
        return encoder(merged), content_type


def prepare_multiprocess_dir(folder: Path) -> Path:
    """Create ``folder`` empty (stale files of an earlier run would be added in) and point
    ``PROMETHEUS_MULTIPROC_DIR`` at it, for the worker processes started after this call."""
    import shutil

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def mark_process_dead(pid: int, multiprocess_dir: Path | None = None) -> None:
    """Drop an exited worker's live gauges (queue depth, stack info) from the merged exposition."""
    from prometheus_client import multiprocess

    folder = multiprocess_dir or Path(os.environ[MULTIPROC_ENV])
    multiprocess.mark_process_dead(pid, str(folder))


SERIES_SUFFIXES: Mapping[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
}


def exported_metric_names(metrics: ServiceMetrics) -> Mapping[str, str]:
    """Series name -> metric type of everything ``metrics`` exports: the names a PromQL query may use
    (``ragops_requests_total``, ``..._bucket``/``_sum``/``_count`` of histograms), read from a rendered exposition,
    so that a name only counts when the service really exports it. Families that have no labelled child yet are
    listed too (their names come from the exposition's ``TYPE`` lines)."""
    body, _ = metrics.render()
    return series_names(body.decode("utf-8"))


def series_names(exposition: str) -> Mapping[str, str]:
    """Series name -> metric type of a Prometheus text exposition (what ``GET /metrics`` returned)."""
    from prometheus_client.parser import text_string_to_metric_families

    names: dict[str, str] = {}
    for family in text_string_to_metric_families(exposition):
        for suffix in SERIES_SUFFIXES.get(family.type, ("",)):
            names[family.name + suffix] = family.type
    return names
