"""The served app's monitoring, end to end on loopback: the record stage writes every request to the request store
(answered, refused, failed, streamed), ``GET /metrics`` exports what the records say (names and types from a real
scrape), and feedback is joined to its request in the store and counted; a real Prometheus scraping the service
evaluates infra/prometheus's rules and fires an alert.

One module-scoped service over the tiny corpus (real ingestion, embedded Qdrant, uvicorn on a free port); the
champion comes from a function, so no MLflow registry is involved.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flows.settings import Settings
from pipelines.index import VectorIndex
from rag.store import RequestRecord
from tests.fixtures.server import Running, api_client, free_port, serve, wait_for
from tests.unit.rag.conftest import BuiltIndex

STACK_VERSION = 4
QUESTION = "When did Mount Kerrigan last erupt?"
MAX_QUESTION_CHARS = 300

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Service:
    running: Running
    settings: Settings
    index_version: int

    def client(self) -> httpx.Client:
        return api_client(self.running.url, timeout=60)

    def record(self, request_id: str) -> RequestRecord | None:
        found: RequestRecord | None = self.running.app.state.requests.get(request_id)
        return found


@pytest.fixture(scope="module")
def service(built_index: BuiltIndex) -> Iterator[Service]:
    from rag.service.app import create_app
    from rag.service.holder import StackHolder
    from rag.types import StackConfig

    base = built_index.settings
    settings = base.model_copy(
        update={"service": base.service.model_copy(update={"max_question_chars": MAX_QUESTION_CHARS})}
    )
    index = VectorIndex(settings).current()
    assert index is not None
    config = StackConfig.for_index(index, name="monitored")
    holder = StackHolder(settings, champion=lambda: (STACK_VERSION, config))
    with serve(create_app(settings, holder=holder)) as running:
        with api_client(running.url, timeout=60) as client:
            wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60)
        yield Service(running, settings, index.version)


def scrape(service: Service) -> tuple[dict[str, str], Samples, str]:
    """Family name -> type, (sample name, labels) -> value, and the raw text of one real scrape."""
    with service.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples, response.text


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def ask(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/query", json={"question": QUESTION, **body})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_an_answered_request_is_recorded_whole(service: Service) -> None:
    with service.client() as client:
        body = ask(client)
    record = service.record(body["request_id"])
    assert record is not None
    assert (record.route, record.status, record.error, record.blocked) == ("/v1/query", 200, None, False)
    assert (record.principal, record.tenant) == ("tests", None)  # the admin key the serve fixture made
    assert (record.stack_name, record.stack_version, record.index_version) == (
        "monitored",
        STACK_VERSION,
        service.index_version,
    )
    assert record.question == QUESTION and record.answer == body["answer"]
    assert record.abstained is body["abstained"]
    assert {"validate", "embed", "retrieve", "answer", "total"} <= set(record.timings_ms)
    assert record.timings_ms["total"] >= record.timings_ms["retrieve"] > 0
    usage = body["usage"]
    assert (record.prompt_tokens, record.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert record.cited_chunk_ids == tuple(c["chunk_id"] for c in body["citations"])
    assert all(c.text for c in record.citations)  # the cited texts travel with the record (feedback needs them)


def test_the_spend_ledger_sums_equal_the_responses_usage(service: Service) -> None:
    started = time.time()
    with service.client() as client:
        bodies = [ask(client, question=q) for q in (QUESTION, "Where is Mount Kerrigan?", QUESTION)]
    store = service.running.app.state.requests
    store.flush()
    rows = store.spend("key", started, time.time() + 1)
    assert [(r.group, r.requests) for r in rows] == [("tests", 3)]
    usage = [b["usage"] for b in bodies]
    assert (rows[0].prompt_tokens, rows[0].completion_tokens) == (
        sum(u["prompt_tokens"] for u in usage),
        sum(u["completion_tokens"] for u in usage),
    )
    assert rows[0].cost_usd == pytest.approx(sum(u["cost_usd"] for u in usage), abs=1e-12)


def test_a_bad_request_and_a_chat_stream_are_recorded(service: Service) -> None:
    with service.client() as client:
        bad = client.post("/v1/query", json={"question": "x" * (MAX_QUESTION_CHARS + 1)})
        assert bad.status_code == 422, bad.text
        with client.stream(
            "POST", "/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}], "stream": True}
        ) as stream:
            chunks = [line for line in stream.iter_lines() if line.startswith("data: {")]
    request_id = chunks[0].split('"id": "chatcmpl-', 1)[1].split('"', 1)[0]
    streamed = service.record(request_id)
    assert streamed is not None and streamed.route == "/v1/chat/completions" and streamed.status == 200
    store = service.running.app.state.requests
    store.flush()
    refused = [
        r for r in store.rows(time.time() - 60, time.time() + 1) if r.status == 422 and r.error == "invalid_request"
    ]
    assert refused and refused[-1].route == "/v1/query" and refused[-1].answer == ""


def test_feedback_is_joined_to_its_request_and_counted(service: Service) -> None:
    with service.client() as client:
        up, down = ask(client), ask(client)
        before = value(scrape(service)[1], "ragops_feedback_total", rating="down")
        for request_id, rating in ((up["request_id"], "up"), (down["request_id"], "down")):
            response = client.post("/v1/feedback", json={"request_id": request_id, "rating": rating})
            assert response.status_code == 200, response.text
        unknown = client.post("/v1/feedback", json={"request_id": "f" * 32, "rating": "up"})
    assert unknown.status_code == 404
    rated_up, rated_down = service.record(up["request_id"]), service.record(down["request_id"])
    assert rated_up is not None and rated_up.feedback is not None and rated_up.feedback.rating == "up"
    assert rated_down is not None and rated_down.feedback is not None and rated_down.feedback.rating == "down"
    window = service.running.app.state.requests.window(time.time() - 60, time.time() + 1)
    assert window.feedback_up >= 1 and window.feedback_down >= 1
    assert value(scrape(service)[1], "ragops_feedback_total", rating="down") == before + 1


def test_a_reader_rates_only_the_answers_it_was_given(service: Service) -> None:
    """OWASP LLM02/LLM08: feedback cannot be written on another user's or another tenant's answer, and the 404 is
    the same as for an unknown request id, so ids cannot be probed; an admin may rate any answer."""
    keys = service.running.app.state.gate.keys
    alice, bob, mallory = (
        keys.create(role="reader", name=name, tenant=tenant).secret
        for name, tenant in (("alice", "acme"), ("bob", "acme"), ("mallory", "globex"))
    )

    def as_key(secret: str) -> httpx.Client:
        return httpx.Client(base_url=service.running.url, timeout=60, headers={"Authorization": f"Bearer {secret}"})

    with as_key(alice) as client:
        asked = ask(client)
    rating = {"request_id": asked["request_id"], "rating": "down"}
    for other in (bob, mallory):
        with as_key(other) as client:
            refused = client.post("/v1/feedback", json=rating)
        assert refused.status_code == 404, refused.text
        assert "unknown request_id" in refused.json()["error"]["message"]
    with as_key(alice) as client:
        assert client.post("/v1/feedback", json=rating).status_code == 200
    with service.client() as admin:
        assert admin.post("/v1/feedback", json={**rating, "rating": "up"}).status_code == 200
    record = service.record(asked["request_id"])
    assert record is not None and record.principal == "alice" and record.tenant == "acme"
    assert record.feedback is not None and record.feedback.rating == "up"


EXPECTED_TYPES = {
    "ragops_requests": "counter",
    "ragops_request_duration_seconds": "histogram",
    "ragops_stage_duration_seconds": "histogram",
    "ragops_time_to_first_token_seconds": "histogram",
    "ragops_stream_output_tokens_per_second": "histogram",
    "gen_ai_client_token_usage": "histogram",
    "ragops_cost_usd": "counter",
    "ragops_guardrail_verdicts": "counter",
    "ragops_abstentions": "counter",
    "ragops_feedback": "counter",
    "ragops_stream_abandoned": "counter",
    "ragops_errors": "counter",
    "ragops_records_dropped": "counter",
    "ragops_batcher_queue_depth": "gauge",
    "ragops_stack_info": "gauge",
}


def test_a_real_scrape_has_the_names_types_and_counts(service: Service) -> None:
    with service.client() as client:
        before = scrape(service)[1]
        ask(client)
        bad = client.post("/v1/query", json={"question": "   "})
        assert bad.status_code == 422
        with client.stream("POST", "/v1/query", json={"question": QUESTION, "stream": True}) as stream:
            assert any(line.startswith("event: done") for line in stream.iter_lines())
    types, after, text = scrape(service)
    assert {name: types.get(name) for name in EXPECTED_TYPES} == EXPECTED_TYPES

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return value(after, name, **labels) - value(before, name, **labels) >= by

    assert grew("ragops_requests_total", 2, route="/v1/query", status="200")
    assert grew("ragops_requests_total", route="/v1/query", status="422")
    assert grew("ragops_errors_total", kind="invalid_request")
    assert grew("ragops_request_duration_seconds_count", 2, route="/v1/query")
    for stage in ("validate", "embed", "retrieve", "answer"):
        assert grew("ragops_stage_duration_seconds_count", 2, stage=stage), stage
    assert grew("ragops_time_to_first_token_seconds_count", route="/v1/query")
    assert grew("gen_ai_client_token_usage_count", 2, gen_ai_token_type="input")
    assert value(after, "ragops_stack_info", stack_name="monitored", stack_version=str(STACK_VERSION)) == 1
    # Low cardinality: no question text and no request id in any label.
    assert QUESTION not in text and "chatcmpl" not in text
    for (_, labels), _ in after.items():
        assert all(len(v) < 64 for _, v in labels), labels


def test_openmetrics_when_asked(service: Service) -> None:
    with service.client() as client:
        response = client.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_record_stage_writes_to_either_database(
    service: Service, backend: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    import asyncio

    from rag.monitoring.metrics import ServiceMetrics
    from rag.stages.build import build_chain
    from rag.stages.context import Principal, RequestContext
    from rag.stages.ports import DirectVectors
    from rag.stages.record import StoreRecorder
    from rag.store import RequestStore
    from tests.unit.rag.test_store import fresh_postgres_database

    if backend == "postgres":
        url = fresh_postgres_database(request.getfixturevalue("postgres_url"))
    else:
        url = f"sqlite:///{tmp_path / 'requests.db'}"
    metrics = ServiceMetrics()
    holder = service.running.app.state.holder
    with RequestStore(url) as store, holder.acquire() as served:
        recorder = StoreRecorder(store, metrics, stack_version=served.version, index_version=served.index_version)
        chain = build_chain(served.engine, vectors=DirectVectors(), recorder=recorder)
        ctx = RequestContext(engine=served.engine, question=QUESTION, principal=Principal("bob", tenant="acme"))
        asyncio.run(chain.run(ctx))
        store.flush()
        # rows() reads the database (get() would also see the copy waiting for the writer)
        (record,) = [r for r in store.rows(0, time.time() + 1) if r.request_id == ctx.request_id]
    assert (record.principal, record.tenant, record.stack_version) == ("bob", "acme", STACK_VERSION)
    assert record.cited_chunk_ids == tuple(c.chunk_id for c in ctx.answer.citations)  # type: ignore[union-attr]
    assert set(ctx.timings) - {"record"} <= set(record.timings_ms)
    assert value(scrape_registry(metrics), "ragops_requests_total", route="/v1/query", status="200") == 1


def scrape_registry(metrics: Any) -> Samples:
    body, _ = metrics.render()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_infra_queries_name_series_a_real_scrape_has(service: Service) -> None:
    """Every PromQL name in infra/prometheus's rules and infra/grafana's dashboard is exported by the running
    service (tests/unit/test_monitoring_infra.py checks the same against an in-process render, without a service)."""
    from rag.monitoring.metrics import series_names
    from tests.unit.test_monitoring_infra import PROMETHEUS_OWN, dashboard_exprs, metric_names, rules

    exported = set(series_names(scrape(service)[2]))
    known = exported | {r["record"] for r in rules() if "record" in r} | PROMETHEUS_OWN
    used = {name for r in rules() for name in metric_names(r["expr"])}
    used |= {name for _, expr in dashboard_exprs() for name in metric_names(expr)}
    assert used and not used - known, f"not exported by the service: {sorted(used - known)}"


def test_a_stream_the_client_leaves_is_recorded_and_counted(service: Service) -> None:
    """A slow LLM streams word by word; the client reads the first delta and goes away."""
    from rag.service.app import create_app
    from rag.service.holder import StackHolder
    from rag.types import StackConfig
    from tests.fixtures.fake_openai import FakeOpenAI

    index = VectorIndex(service.settings).current()
    assert index is not None
    reply = "Mount Kerrigan last erupted in 1847 [1]. " + "It has been quiet ever since. " * 30
    with FakeOpenAI(reply=reply, chunk_delay_s=0.05) as fake:
        config = StackConfig.for_index(
            index, name="slow-llm", answerer={"kind": "llm"}, llm={"base_url": fake.base_url, "model": fake.model}
        )
        holder = StackHolder(service.settings, champion=lambda: (STACK_VERSION + 1, config))
        with (
            serve(create_app(service.settings, holder=holder)) as running,
            api_client(running.url, timeout=60) as client,
        ):
            wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60)
            with client.stream("POST", "/v1/query", json={"question": QUESTION, "stream": True}) as stream:
                for line in stream.iter_lines():
                    if line.startswith("event: delta"):
                        break  # leave mid-answer
            store = running.app.state.requests

            def left() -> list[RequestRecord]:
                store.flush()
                return [r for r in store.rows(time.time() - 60, time.time() + 1) if r.stack_name == "slow-llm"]

            (record,), _ = wait_for(left, timeout=30)
            metrics = client.get("/metrics").text
    assert (record.status, record.error, record.route) == (499, "client_disconnected", "/v1/query")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert value(samples, "ragops_stream_abandoned_total", route="/v1/query") == 1
    assert value(samples, "ragops_requests_total", route="/v1/query", status="499") == 1


def test_sampled_requests_are_mlflow_traces_with_a_span_per_stage_and_the_rating(built_index: BuiltIndex) -> None:
    """RAGOPS_TRACING__SAMPLE_RATE=1: the request is a trace in the MLflow experiment ``serving`` (root span with
    the question and answer, a span per stage, the retrieval span carrying the cited chunks), and its thumbs-down
    is a human feedback assessment on it; exported after the request, off its path."""
    import mlflow

    from rag.monitoring.tracing import EXCERPT_CHARS, EXPERIMENT, REQUEST_TAG, TracingSettings
    from rag.service.app import create_app
    from rag.service.holder import StackHolder
    from rag.types import StackConfig

    base = built_index.settings
    settings = base.model_copy(update={"tracing": TracingSettings(sample_rate=1.0)})
    index = VectorIndex(settings).current()
    assert index is not None
    config = StackConfig.for_index(index, name="traced")
    holder = StackHolder(settings, champion=lambda: (STACK_VERSION, config))
    with serve(create_app(settings, holder=holder)) as running, api_client(running.url, timeout=60) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60)
        body = ask(client)
        record = running.app.state.requests.get(body["request_id"])
        tracer = running.app.state.tracer
        wait_for(lambda: tracer.exported >= 1, timeout=60)
        rated = client.post("/v1/feedback", json={"request_id": body["request_id"], "rating": "down"})
        assert rated.status_code == 200, rated.text
        # rated down, so queued for review; the reviewer's label becomes expectations on the trace
        chunk = body["citations"][0]["chunk_id"]
        label = {"verdict": "incorrect", "right_answer": "In 1917.", "relevant_chunk_ids": [chunk]}
        labelled = client.post(f"/v1/review/{body['request_id']}", json=label)
        assert labelled.status_code == 200, labelled.text
    # the service has stopped: its exporter wrote everything queued
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    traces = mlflow.search_traces(
        locations=[experiment.experiment_id],
        filter_string=f"tag.`{REQUEST_TAG}` = '{body['request_id']}'",
        return_type="list",
    )
    assert len(traces) == 1
    trace = traces[0]
    names = [span.name for span in trace.data.spans]
    assert names[0] == "request" and {"validate", "embed", "retrieve", "answer"} <= set(names)
    root = trace.data.spans[0]
    assert root.inputs["question"] == QUESTION and root.outputs["answer"] == body["answer"]
    retrieve = next(span for span in trace.data.spans if span.name == "retrieve")
    assert retrieve.span_type == "RETRIEVER" and retrieve.inputs == {"query": QUESTION}
    # the cited chunks as MLflow retriever documents: the Traces view lists them, its retrieval judges read them
    assert [d["id"] for d in retrieve.outputs] == [c["chunk_id"] for c in body["citations"]]
    assert record is not None
    for document, cited in zip(retrieve.outputs, record.citations, strict=True):
        assert cited.text and document["page_content"] == cited.text[:EXCERPT_CHARS]
        assert document["metadata"]["doc_uri"] == cited.source and document["metadata"]["doc_id"] == cited.doc_id
    ratings = [a for a in trace.info.assessments if a.name == "user_rating"]
    assert len(ratings) == 1 and ratings[0].value is False
    expected = {a.name: a for a in trace.info.assessments if a.name != "user_rating"}
    assert expected["review_verdict"].value == "incorrect" and expected["expected_response"].value == "In 1917."
    assert expected["relevant_chunk_ids"].value == [chunk]
    assert expected["review_verdict"].source.source_type == "HUMAN"
    assert expected["review_verdict"].source.source_id == "tests"  # the reviewer's key


# ------------------------------------------------------------------------------------- a real Prometheus, end to end
PROMETHEUS = shutil.which("prometheus")
RULES = Path(__file__).resolve().parents[3] / "infra" / "prometheus" / "rules" / "ragops.yml"


def fast_rules(text: str) -> str:
    """infra/prometheus's rules with every ``for:`` set to 0s: the test cannot wait the minutes they ask for.
    Expressions, thresholds, windows and labels are the shipped ones."""
    return re.sub(r"(?m)^(\s+for:\s*)\S+\s*$", r"\g<1>0s", text)


@contextlib.contextmanager
def prometheus(folder: Path, target: Running) -> Iterator[httpx.Client]:
    """A real Prometheus (Debian's package) scraping ``target`` every second and evaluating the rules every
    second; yields a client for its HTTP API."""
    assert PROMETHEUS is not None
    (folder / "rules.yml").write_text(fast_rules(RULES.read_text(encoding="utf-8")), encoding="utf-8")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {
                "job_name": "ragops-api",
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials": target.key},
                "static_configs": [{"targets": [f"127.0.0.1:{target.port}"]}],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    port = free_port()
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            def ready() -> bool:
                assert process.poll() is None, (folder / "prometheus.log").read_text()
                try:
                    return client.get("/-/ready").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(ready, timeout=30, interval=0.1)
            yield client
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def instant(client: httpx.Client, query: str) -> list[dict[str, Any]]:
    """The result of an instant PromQL query."""
    response = client.get("/api/v1/query", params={"query": query})
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (Debian package `prometheus`, see the Makefile)")
def test_a_real_prometheus_records_the_service_and_alerts_on_a_thumbs_down_surge(
    service: Service, tmp_path: Path
) -> None:
    """Prometheus scrapes the live service with infra/prometheus's rules loaded (``for:`` overridden to 0s, see
    :func:`fast_rules`; scrape and evaluation every second): the recording rules produce series, and a surge of
    thumbs-down ratings fires ``RagopsThumbsDownShareHigh``, read from ``/api/v1/alerts``."""
    with prometheus(tmp_path, service.running) as prom, service.client() as client:
        groups = prom.get("/api/v1/rules").json()["data"]["groups"]
        assert {g["name"] for g in groups} == {"ragops-recording", "ragops-slo-latency", "ragops-alerts"}
        wait_for(lambda: instant(prom, 'up{job="ragops-api"} == 1'), timeout=10)
        ask(client)  # the request and feedback series exist before the surge, so increase() sees all of it
        time.sleep(1.5)  # a scrape or two with them
        for _ in range(12):
            rated = client.post("/v1/feedback", json={"request_id": ask(client)["request_id"], "rating": "down"})
            assert rated.status_code == 200, rated.text

        def firing() -> list[dict[str, Any]]:
            alerts = prom.get("/api/v1/alerts").json()["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "RagopsThumbsDownShareHigh"]

        (alert,), seconds = wait_for(lambda: [a for a in firing() if a["state"] == "firing"], timeout=15, interval=0.2)
        assert alert["labels"]["severity"] == "ticket"
        for record in (
            "ragops:thumbs_down_share_1h",
            "ragops:error_ratio_5m",
            "route:ragops_request_duration_seconds:p99_5m",
        ):
            assert instant(prom, record), f"recording rule {record} produced no series"
        (share,) = instant(prom, "ragops:thumbs_down_share_1h")
        assert float(share["value"][1]) > 0.3
        (errors,) = instant(prom, "ragops:error_ratio_5m")
        assert float(errors["value"][1]) == 0.0  # nothing failed: the error-rate alert must stay quiet
        assert not [
            a
            for a in prom.get("/api/v1/alerts").json()["data"]["alerts"]
            if a["labels"]["alertname"] == "RagopsErrorRateHigh"
        ]
