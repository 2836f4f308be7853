"""Load control in the served request path: quotas answer 429 and a full admission queue 503, both with
``Retry-After`` and before any work; token budgets are charged from the answer's real usage, and past a used-up
budget the answer is extractive, without the LLM (or 429, when the limits say refuse).

A real service on loopback over the tiny corpus, with an LLM stack whose fake OpenAI-compatible server streams
slowly, so a request can be held open while others arrive.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flows.settings import Settings
from rag.limits.settings import LimitsSettings
from tests.fixtures.corpus import write_corpus
from tests.fixtures.fake_openai import FakeOpenAI
from tests.fixtures.server import Running, api_client, serve, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

QUESTION = "When did Mount Kerrigan last erupt?"
REPLY = "Mount Kerrigan last erupted in 1847 [1]. The ash covered the valley of Tesh [1]."


@dataclass(frozen=True)
class Home:
    settings: Settings
    llm: FakeOpenAI


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[Home]:
    from pipelines.index import VectorIndex
    from pipelines.ingest import run_ingest
    from rag.stack import StackRegistry
    from rag.types import StackConfig

    root = tmp_path_factory.mktemp("load-control")
    with pytest.MonkeyPatch.context() as patch, FakeOpenAI(reply=REPLY, chunk_delay_s=0.15) as llm:
        for key in list(os.environ):
            if key.startswith("RAGOPS_"):
                patch.delenv(key)
        settings = Settings(home=root / "home", cache=shared_cache)
        settings.ensure_dirs()
        report = run_ingest(settings, write_corpus(root / "corpus"))
        assert report.published, report.to_json()
        index = VectorIndex(settings).current()
        assert index is not None
        config = StackConfig.for_index(
            index,
            name="slow-llm",
            answerer={"kind": "llm"},
            llm={"base_url": llm.base_url, "model": llm.model, "timeout_s": 30},
        )
        registry = StackRegistry(settings)
        registry.promote(registry.register(config, actor="tests"), actor="tests", reason="load control tests")
        yield Home(settings, llm)


def _with_limits(settings: Settings, **limits: object) -> Settings:
    return settings.model_copy(update={"limits": LimitsSettings.model_validate(limits)})


@contextlib.contextmanager
def _served(settings: Settings) -> Iterator[tuple[Running, httpx.Client]]:
    from rag.service.app import create_app

    with serve(create_app(settings)) as service, api_client(service.url, timeout=60) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60)
        yield service, client


def test_a_key_over_its_request_quota_gets_429_with_retry_after(home: Home) -> None:
    with _served(_with_limits(home.settings, requests_per_minute=2)) as (_, client):
        answered = [client.post("/v1/query", json={"question": QUESTION}) for _ in range(2)]
        asked = len(home.llm.requests)
        refused = client.post("/v1/query", json={"question": QUESTION})
    assert [r.status_code for r in answered] == [200, 200]
    assert "limit" in answered[0].json()["timings"]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    error = refused.json()["error"]
    assert error["code"] == "rate_limited" and "requests_per_minute" in error["message"]
    assert len(home.llm.requests) == asked  # refused before any work: the LLM was not called


def test_the_token_budget_is_charged_with_the_answer_s_real_tokens(home: Home) -> None:
    """One answer costs more tokens than the minute's budget: it is served, and the next request waits."""
    with _served(_with_limits(home.settings, tokens_per_minute=50)) as (_, client):
        first = client.post("/v1/query", json={"question": QUESTION})
        second = client.post("/v1/query", json={"question": QUESTION})
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 50
    assert second.status_code == 429 and "tokens_per_minute" in second.json()["error"]["message"]
    assert int(second.headers["Retry-After"]) >= 1


def test_past_capacity_a_request_is_shed_with_503_and_retry_after(home: Home) -> None:
    """One slot, no queue: while a slow stream holds the slot, the next request is refused at once."""
    settings = _with_limits(home.settings, max_concurrency=1, max_queue=0)
    with _served(settings) as (service, client):
        started = threading.Event()
        streamed: list[str] = []

        def hold() -> None:
            body = {"question": QUESTION, "stream": True}
            with (
                api_client(service.url, timeout=60) as other,
                other.stream("POST", "/v1/query", json=body) as r,
            ):
                for line in r.iter_lines():
                    started.set()
                    streamed.append(line)

        thread = threading.Thread(target=hold)
        thread.start()
        assert started.wait(30)
        shed = client.post("/v1/query", json={"question": QUESTION})
        thread.join(60)
        after = client.post("/v1/query", json={"question": QUESTION})
    assert shed.status_code == 503 and shed.json()["error"]["code"] == "overloaded"
    assert int(shed.headers["Retry-After"]) >= 1
    assert any(line.startswith("event: done") for line in streamed)  # the held stream finished normally
    assert after.status_code == 200  # the slot came back


def test_a_used_up_budget_stops_the_next_request_across_a_restart(home: Home) -> None:
    """Budgets live in the request store's database: the answer that crosses the daily token budget is served, and
    a second app instance on the same database (a restart, or another worker) set to refuse past a budget refuses
    the next request with 429 naming the budget and its reset."""
    settings = _with_limits(home.settings, key_daily_tokens=50, over_budget="refuse")
    with _served(settings) as (_, client):
        first = client.post("/v1/query", json={"question": QUESTION})
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 50
    asked = len(home.llm.requests)
    with _served(settings) as (_, client):
        refused = client.post("/v1/query", json={"question": QUESTION})
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert "key:daily_tokens" in error["message"] and "resets at" in error["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert len(home.llm.requests) == asked  # refused before any work


def _sse(lines: list[str]) -> list[tuple[str, object]]:
    """A server-sent event stream's ``(event, data)`` pairs."""
    events: list[tuple[str, object]] = []
    name = ""
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_past_a_used_up_budget_the_answer_is_extractive_without_the_llm(home: Home) -> None:
    """By default a used-up budget stops the spending, not the service: whole and streamed, the next requests get
    200 with the extractive answer, a notice naming the budget, ``degraded: ["llm_over_budget"]`` and zero usage;
    the LLM is not called and the degradation is counted in the metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    settings = _with_limits(home.settings, key_monthly_tokens=50)  # its own window: the daily budget test's is apart
    with _served(settings) as (_, client):
        first = client.post("/v1/query", json={"question": QUESTION})
        asked = len(home.llm.requests)
        over = client.post("/v1/query", json={"question": QUESTION})
        with client.stream("POST", "/v1/query", json={"question": QUESTION, "stream": True}) as r:
            assert r.status_code == 200
            streamed = _sse(list(r.iter_lines()))
        metrics = client.get("/metrics").text
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 50 and first.json()["degraded"] == []
    assert over.status_code == 200, over.text
    body = over.json()
    assert body["degraded"] == ["llm_over_budget"]
    assert "key:monthly_tokens" in body["notice"] and "extractive" in body["notice"]
    assert "1847" in body["answer"] and body["answer"] != first.json()["answer"]  # not the LLM's reply
    assert body["usage"]["total_tokens"] == 0 and body["usage"]["cost_usd"] == 0
    kinds = [name for name, _ in streamed]
    assert kinds[0] == "notice" and kinds[-1] == "done" and "delta" in kinds
    done = streamed[-1][1]
    assert isinstance(done, dict) and done["degraded"] == ["llm_over_budget"] and done["answer"] == body["answer"]
    assert len(home.llm.requests) == asked  # neither request called the LLM
    counted = {
        s.labels["kind"]: s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "ragops_degraded_requests"
        for s in family.samples
        if s.name == "ragops_degraded_requests_total"
    }
    assert counted.get("llm_over_budget") == 2
