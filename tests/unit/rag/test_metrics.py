"""The service metrics, read back from a real exposition (the text a Prometheus server would scrape)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rag.monitoring.metrics import ServiceMetrics, exported_metric_names
from rag.store import RequestRecord

EXPECTED_TYPES = {
    "ragops_requests": "counter",
    "ragops_request_duration_seconds": "histogram",
    "ragops_stage_duration_seconds": "histogram",
    "gen_ai_client_token_usage": "histogram",
    "gen_ai_client_operation_duration_seconds": "histogram",
    "ragops_time_to_first_token_seconds": "histogram",
    "ragops_stream_output_tokens_per_second": "histogram",
    "ragops_cost_usd": "counter",
    "ragops_cache_requests": "counter",
    "ragops_cache_backend_errors": "counter",
    "ragops_budget_soft_limit": "counter",
    "ragops_guardrail_verdicts": "counter",
    "ragops_abstentions": "counter",
    "ragops_feedback": "counter",
    "ragops_stream_abandoned": "counter",
    "ragops_errors": "counter",
    "ragops_degraded_requests": "counter",
    "ragops_records_dropped": "counter",
    "ragops_batcher_queue_depth": "gauge",
    "ragops_stack_info": "gauge",
}


def record(**changes: object) -> RequestRecord:
    fields: dict[str, object] = {
        "request_id": "a" * 32,
        "at": 1.0,
        "principal": "alice",
        "question": "a question nobody may see in metrics?",
        "timings_ms": {"retrieve": 20.0, "answer": 3.0, "total": 1500.0},
        "prompt_tokens": 300,
        "completion_tokens": 20,
        "cost_usd": 0.25,
        "verdicts": {"injection": "pass", "pii_output": "redact"},
    }
    fields.update(changes)
    return RequestRecord(**fields)  # type: ignore[arg-type]


def scrape(metrics: ServiceMetrics, accept: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render(accept)
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_names_and_types_from_a_real_scrape() -> None:
    body, content_type = ServiceMetrics().render()
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    assert {name: families.get(name) for name in EXPECTED_TYPES} == EXPECTED_TYPES
    # Nothing from the process-wide default registry (the ``_created`` timestamps the text format adds aside).
    assert {name for name in families if not name.endswith("_created")} == set(EXPECTED_TYPES)


def test_one_record_fills_the_request_metrics() -> None:
    metrics = ServiceMetrics()
    metrics.observe_record(record())
    metrics.observe_record(record(status=503, error="retrieval_error", abstained=True, route="/v1/chat/completions"))
    got = scrape(metrics)
    assert got[("ragops_requests_total", (("route", "/v1/query"), ("status", "200")))] == 1
    assert got[("ragops_requests_total", (("route", "/v1/chat/completions"), ("status", "503")))] == 1
    # 1.5 s is above the 1 s SLO bucket: the burn-rate rules must see it as slow.
    assert got[("ragops_request_duration_seconds_bucket", (("le", "1.0"), ("route", "/v1/query")))] == 0
    assert got[("ragops_request_duration_seconds_bucket", (("le", "2.5"), ("route", "/v1/query")))] == 1
    assert got[("ragops_stage_duration_seconds_count", (("stage", "retrieve"),))] == 2
    assert ("ragops_stage_duration_seconds_count", (("stage", "total"),)) not in got
    token_labels = (
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "ragops"),
        ("gen_ai_request_model", "extractive"),
    )
    assert got[("gen_ai_client_token_usage_sum", (*token_labels, ("gen_ai_token_type", "input")))] == 600
    assert got[("gen_ai_client_token_usage_sum", (*token_labels, ("gen_ai_token_type", "output")))] == 40
    assert got[("ragops_cost_usd_total", ())] == pytest.approx(0.5)
    assert got[("ragops_guardrail_verdicts_total", (("check", "pii_output"), ("verdict", "redact")))] == 2
    assert got[("ragops_abstentions_total", (("route", "/v1/chat/completions"),))] == 1
    assert got[("ragops_errors_total", (("kind", "retrieval_error"),))] == 1


def test_labels_never_carry_request_text_or_ids() -> None:
    metrics = ServiceMetrics()
    metrics.observe_record(record())
    body, _ = metrics.render()
    assert b"nobody may see" not in body and b"a" * 32 not in body and b"alice" not in body


def test_streams_cache_feedback_and_gauges() -> None:
    metrics = ServiceMetrics()
    metrics.observe_stream("/v1/query", first_token_s=0.2, output_tokens=41, duration_s=1.2)
    metrics.stream_abandoned_by_client("/v1/query")
    metrics.observe_cache(hit=True)
    metrics.observe_cache(hit=False)
    metrics.observe_cache(hit=False)
    metrics.observe_feedback("down")
    metrics.observe_model_call(0.7, model="gpt-4o-mini", provider="openai", error_type="timeout")
    metrics.set_batcher_queue_depth(5)
    got = scrape(metrics)
    assert got[("ragops_time_to_first_token_seconds_sum", (("route", "/v1/query"),))] == pytest.approx(0.2)
    assert got[("ragops_stream_output_tokens_per_second_sum", (("route", "/v1/query"),))] == pytest.approx(40.0)
    assert got[("ragops_stream_abandoned_total", (("route", "/v1/query"),))] == 1
    assert got[("ragops_cache_requests_total", (("result", "miss"),))] == 2
    assert got[("ragops_feedback_total", (("rating", "down"),))] == 1
    assert got[("ragops_batcher_queue_depth", ())] == 5
    key = ("gen_ai_client_operation_duration_seconds_count", (
        ("error_type", "timeout"), ("gen_ai_operation_name", "chat"), ("gen_ai_provider_name", "openai"),
        ("gen_ai_request_model", "gpt-4o-mini"),
    ))  # fmt: skip
    assert got[key] == 1


def test_stack_info_follows_the_served_stack() -> None:
    metrics = ServiceMetrics()
    metrics.set_stack(stack_name="default", stack_version=1, index_version=4, embedder="abc123")
    metrics.set_stack(stack_name="default", stack_version=2, index_version=5, embedder="abc123")
    info = {k: v for k, v in scrape(metrics).items() if k[0] == "ragops_stack_info"}
    assert info == {
        (
            "ragops_stack_info",
            (("embedder", "abc123"), ("index_version", "5"), ("stack_name", "default"), ("stack_version", "2")),
        ): 1.0
    }


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    body, content_type = ServiceMetrics().render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_two_apps_in_one_process_do_not_collide() -> None:
    first, second = ServiceMetrics(), ServiceMetrics()
    first.observe_feedback("up")
    assert ("ragops_feedback_total", (("rating", "up"),)) not in scrape(second)


def test_exported_names_include_series_of_families_without_samples() -> None:
    names = exported_metric_names(ServiceMetrics())
    assert names["ragops_requests_total"] == "counter"
    assert names["ragops_request_duration_seconds_bucket"] == "histogram"
    assert "ragops_requests_bucket" not in names


WORKER = """
import sys
from rag.monitoring.metrics import ServiceMetrics
from rag.store import RequestRecord
m = ServiceMetrics()
n = int(sys.argv[1])
for i in range(n):
    m.observe_record(RequestRecord(request_id=str(i), at=0.0, principal="p", question="q",
                                   timings_ms={"total": 50.0}, cost_usd=0.5))
m.set_batcher_queue_depth(n)
m.set_stack(stack_name="default", stack_version=3, index_version=1, embedder="e")
"""


@pytest.mark.integration
def test_workers_aggregate_through_the_multiprocess_dir(tmp_path: Path) -> None:
    folder = tmp_path / "prom"
    folder.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": str(Path(__file__).parents[3])}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(n)], env=env) for n in (3, 4)]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    merged = ServiceMetrics(multiprocess_dir=folder)
    got = scrape(merged)
    assert got[("ragops_requests_total", (("route", "/v1/query"), ("status", "200")))] == 7
    assert got[("ragops_request_duration_seconds_count", (("route", "/v1/query"),))] == 7
    assert got[("ragops_cost_usd_total", ())] == pytest.approx(3.5)
    # Live gauges only count processes still alive; these workers have exited (their pids are gone), so the
    # merged value is whatever their files say unless marked dead: here the sum of both.
    assert got[("ragops_batcher_queue_depth", ())] == 7
    labels = (("embedder", "e"), ("index_version", "1"), ("stack_name", "default"), ("stack_version", "3"))
    assert got[("ragops_stack_info", labels)] == 1
