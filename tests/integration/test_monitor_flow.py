"""The Prefect flow ``monitor`` under Prefect's test harness: a breach posts Alertmanager alerts and fails the run;
a healthy window completes. (Rules, drift and alerts in detail: tests/unit/evaluation/test_monitor.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from flows.settings import Settings
from rag.store import RequestStore
from tests.fixtures.webhook import Receiver
from tests.unit.evaluation.test_monitor import record

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_a_breach_alerts_and_fails_the_run_a_healthy_window_completes(
    prefect_harness: None,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    receiver: tuple[str, type[Receiver]],
) -> None:
    from flows.monitor import monitor_flow

    url, handler = receiver
    monkeypatch.setenv("RAGOPS_MONITOR__WEBHOOK_URL", url)
    now = time.time()
    with RequestStore(settings.store.resolve_url(settings.home), purge_interval_s=None) as store:
        for i in range(30):
            store.record(record(i, now - 120 + i))
    healthy = monitor_flow(window_minutes=5, drift=False, return_state=True)
    assert healthy.is_completed(), healthy.message
    assert healthy.result()["ok"] is True and handler.bodies == []

    with RequestStore(settings.store.resolve_url(settings.home), purge_interval_s=None) as store:
        for i in range(100, 130):
            store.record(record(i, time.time() - 10, timings_ms={"total": 4000.0}))
    failed = monitor_flow(window_minutes=5, drift=False, return_state=True)
    assert failed.is_failed()
    assert "latency p99" in (failed.message or "") or "latency p99" in str(failed.result(raise_on_failure=False))
    assert [a["labels"]["rule"] for a in handler.bodies[0]] == ["latency_p99_ms", "latency_p95_ms"]

    from evaluation.monitor import load_status

    status = load_status(settings)
    assert status is not None and {b["rule"] for b in status["breaches"]} == {"latency_p99_ms", "latency_p95_ms"}
