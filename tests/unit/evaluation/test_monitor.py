"""The monitor: window figures and rules over a real request store, injected faults raising their rule and steady
traffic raising none, query drift with the real MiniLM embedder (off-domain detected, in-domain paraphrases not),
Alertmanager-shaped alerts posted (and retried) to a real loopback receiver, and ``ragops monitor run|status``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from evaluation.monitor import (
    alertmanager_alerts,
    apply_rules,
    mmd_permutation_test,
    post_alerts_retried,
    query_drift,
    reference_questions,
    run_window,
)
from evaluation.settings import MonitorSettings
from flows.settings import Settings
from pipelines.embed import Embedder
from rag.store import RequestRecord, RequestStore
from tests.fixtures.webhook import Receiver

NOW = 1_800_000_000.0

OFF_DOMAIN = [
    "How long should I boil an egg for a runny yolk?",
    "Who won the football world cup in 1998?",
    "What is the best sourdough starter ratio?",
    "How do I change a bicycle tyre?",
    "Which planets have rings?",
    "What is a good beginner yoga routine?",
    "How do you make a French omelette?",
    "When did the Roman empire fall?",
    "What are the rules of cricket?",
    "How do I train a puppy to sit?",
    "Which wine goes with salmon?",
    "How tall is Mount Everest?",
    "What is the capital of Australia?",
    "How do I knit a scarf?",
    "Who painted the Mona Lisa?",
    "What causes the northern lights?",
    "How can I grow tomatoes on a balcony?",
    "What is the plot of Hamlet?",
    "How many players are on a basketball team?",
    "What is the best way to learn the guitar?",
    "How do I remove a red wine stain?",
    "Which dinosaurs lived in the Jurassic period?",
    "How do I bake chocolate chip cookies?",
    "Who wrote Pride and Prejudice?",
    "What is the offside rule in hockey?",
]


def record(n: int, at: float, **changes: Any) -> RequestRecord:
    fields: dict[str, Any] = {
        "request_id": f"{n:032x}",
        "at": at,
        "principal": "p",
        "question": f"question {n}?",
        "answer": "answer [1]",
        "stack_name": "s",
        "stack_version": 1,
        "index_version": 1,
        "timings_ms": {"retrieve": 5.0, "total": 40.0 + n % 7},
        "prompt_tokens": 300,
        "completion_tokens": 40,
        "cost_usd": 0.0004,
        "verdicts": {"injection": "allow", "pii_input": "allow"},
    }
    fields.update(changes)
    return RequestRecord(**fields)


@pytest.fixture
def store(settings: Settings) -> Iterator[RequestStore]:
    with RequestStore(settings.store.resolve_url(settings.home), purge_interval_s=None) as opened:
        yield opened


def steady(store: RequestStore, count: int = 60, *, start: int = 0, **changes: Any) -> None:
    """``count`` healthy requests over the 10 minutes before NOW, with a few ratings (mostly up)."""
    for i in range(start, start + count):
        store.record(record(i, NOW - 600 + i * (590 / count), **changes))
    store.flush()
    for i in range(start, start + 12):
        store.set_feedback(f"{i:032x}", "down" if i % 6 == 0 else "up")


FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "latency_spike": ({"timings_ms": {"retrieve": 900.0, "total": 2500.0}}, "latency_p99_ms"),
    "error_burst": ({"status": 503, "error": "retrieval_error"}, "error_rate"),
    "cost_jump": ({"cost_usd": 0.05, "completion_tokens": 4000}, "cost_per_request_usd"),
    "guardrail_surge": ({"verdicts": {"injection": "block"}, "blocked": True}, "guardrail_trigger_rate"),
    "abstention_surge": ({"abstained": True}, "abstention_rate"),
}


def test_steady_traffic_breaches_nothing(settings: Settings, store: RequestStore) -> None:
    steady(store)
    report = run_window(settings, store, embed=None, reference=(), until=NOW, window_minutes=15)
    assert report.ok, report.message()
    assert report.stats.requests == 60 and report.figures()["p99_ms"] < 50
    assert {"latency_p99_ms", "error_rate", "cost_per_request_usd", "thumbs_down_share"} <= set(report.checked)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_injected_fault_raises_its_rule(settings: Settings, store: RequestStore, fault: str) -> None:
    changes, rule = FAULTS[fault]
    steady(store)
    for i in range(100, 130):  # a burst of 30 faulty requests in the last minute
        store.record(record(i, NOW - 60 + i - 100, **changes))
    report = run_window(settings, store, embed=None, reference=(), until=NOW, window_minutes=15)
    assert rule in {b.rule for b in report.breaches}, report.to_json()


def test_a_thumbs_down_surge_breaches(settings: Settings, store: RequestStore) -> None:
    steady(store)
    for i in range(12, 40):
        store.set_feedback(f"{i:032x}", "down")
    report = run_window(settings, store, embed=None, reference=(), until=NOW, window_minutes=15)
    assert [b.rule for b in report.breaches] == ["thumbs_down_share"]


def test_a_quiet_window_fires_no_rate_rule(settings: Settings, store: RequestStore) -> None:
    for i in range(5):  # every one an error, but five requests are no evidence
        store.record(record(i, NOW - 30, status=500, error="internal"))
    report = run_window(settings, store, embed=None, reference=(), until=NOW, window_minutes=15)
    assert report.ok and "error_rate" not in report.checked


def test_thresholds_come_from_settings(settings: Settings, store: RequestStore) -> None:
    steady(store)
    strict = settings.model_copy(update={"monitor": settings.monitor.model_copy(update={"p99_ms_max": 10.0})})
    report = run_window(strict, store, embed=None, reference=(), until=NOW, window_minutes=15)
    assert [b.rule for b in report.breaches] == ["latency_p99_ms"] and report.breaches[0].threshold == 10.0


# ------------------------------------------------------------------------------------------------ query drift
def test_mmd_test_separates_shifted_samples_and_not_equal_ones() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 8)), rng.normal(size=(60, 8))
    assert mmd_permutation_test(x, y, permutations=200)[1] > 0.05
    assert mmd_permutation_test(x + 1.0, y, permutations=200)[1] < 0.01


@pytest.fixture(scope="module")
def reference() -> list[str]:
    return reference_questions(Settings())


def test_off_domain_questions_are_drift(embedder: Embedder, reference: list[str]) -> None:
    drift = query_drift(OFF_DOMAIN, reference, embedder.encode, MonitorSettings())
    assert drift is not None and drift.drifted and drift.p_value < 0.01, drift


def test_in_domain_paraphrases_are_not_drift(embedder: Embedder, reference: list[str]) -> None:
    # Held-out demo questions, reworded the way users write: the reference sample below never contains them.
    # (One prefix on every question is itself a shift the test notices, p about 0.02-0.04: users vary.)
    held_out = reference[1::6][:30]
    templates = ["{q}", "Quick question: {l}", "Do you know {l}", "{q} Thanks!", "Hi, {l}", "I need to know: {l}"]
    paraphrased = [templates[i % len(templates)].format(q=q, l=q[0].lower() + q[1:]) for i, q in enumerate(held_out)]
    rest = [q for q in reference if q not in held_out]
    drift = query_drift(paraphrased, rest, embedder.encode, MonitorSettings())
    assert drift is not None and not drift.drifted, drift


def test_drift_needs_enough_questions(embedder: Embedder, reference: list[str]) -> None:
    assert query_drift(OFF_DOMAIN[:5], reference, embedder.encode, MonitorSettings()) is None


def test_drift_through_the_window(settings: Settings, store: RequestStore, embedder: Embedder) -> None:
    for i, question in enumerate(OFF_DOMAIN):
        store.record(record(i, NOW - 100 + i, question=question))
    report = run_window(settings, store, embed=embedder.encode, reference=reference_questions(settings), until=NOW)
    assert "query_drift" in {b.rule for b in report.breaches}


# ------------------------------------------------------------------------------------------------------ alerts
def test_breaches_are_posted_as_alertmanager_alerts_with_retries(
    settings: Settings, store: RequestStore, receiver: tuple[str, type[Receiver]]
) -> None:
    url, handler = receiver
    steady(store)
    for i in range(100, 120):
        store.record(record(i, NOW - 30, status=503, error="retrieval_error"))
    report = run_window(settings, store, embed=None, reference=(), until=NOW)
    post_alerts_retried(url, alertmanager_alerts(report), delays_s=(0.05,))
    assert handler.fail_first == 0 and len(handler.bodies) == 1  # the 503 was retried
    (alert,) = handler.bodies[0]
    assert alert["labels"] == {
        "alertname": "RagopsErrorRate",
        "severity": "critical",
        "rule": "error_rate",
        "service": "ragops",
    }
    assert "error rate" in alert["annotations"]["summary"] and alert["startsAt"].startswith("2027-01-15")


def test_rules_without_data_are_not_checked() -> None:
    from rag.store import WindowStats

    empty = WindowStats(0, 1, 0, 0, 0, 0, 0, 0, 0.0, 0, 0, None)
    assert apply_rules(empty, None, MonitorSettings()) == ([], [])


# ---------------------------------------------------------------------------------------------------- the CLI
def test_cli_run_fails_on_a_breach_and_status_lists_it(settings: Settings, store: RequestStore) -> None:
    from flows.cli import app

    now = time.time()
    for i in range(30):
        store.record(record(i, now - 60 + i, status=500, error="internal"))
    store.flush()
    runner = CliRunner()
    before = runner.invoke(app, ["monitor", "status"])
    assert before.exit_code == 1 and "no monitor run yet" in before.output
    result = runner.invoke(app, ["monitor", "run", "--no-drift", "--json", "--window", "5"])
    assert result.exit_code == 4, result.output
    report = json.loads(result.stdout.splitlines()[0])
    assert [b["rule"] for b in report["breaches"]] == ["error_rate"] and report["mlflow_run_id"]
    status = runner.invoke(app, ["monitor", "status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["breaches"][0]["rule"] == "error_rate"

    import mlflow

    run = mlflow.get_run(report["mlflow_run_id"])
    assert run.data.metrics["error_rate"] == 1.0 and run.data.tags["ragops.monitor.breaches"] == "error_rate"
