"""``ragops serve --workers 2``: ``/metrics`` answers with the service's totals whichever worker takes the scrape.

No stack is registered, so every question is a 503 ``no_stack``: the request count is exact and needs no index.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flows.settings import Settings
from pipelines.env import offline_env
from tests.fixtures.server import free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def _requests_total(text: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "ragops_requests"
        for s in family.samples
        if s.name == "ragops_requests_total" and s.labels.get("status") == "503"
    )


def _admin_key(settings: Settings) -> str:
    from rag.security.gate import Gate

    gate = Gate(settings)
    try:
        return str(gate.keys.create(role="admin", name="tests", created_by="tests").secret)
    finally:
        gate.close()


def test_two_workers_export_merged_totals(settings: Settings) -> None:
    headers = {"Authorization": f"Bearer {_admin_key(settings)}"}
    port = free_port()
    env = {**os.environ, **offline_env(settings), "RAGOPS_HOME": str(settings.home), "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [sys.executable, "-m", "flows.cli", "serve", "--workers", "2", "--port", str(port)]
    process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=headers) as client:

            def up() -> bool:
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(up, timeout=90, interval=0.2)
            asked = 12
            for _ in range(asked):  # new connections: the kernel spreads them over both workers
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, headers=headers) as fresh:
                    assert fresh.post("/v1/query", json={"question": "anything?"}).status_code == 503
            scrapes = [client.get("/metrics", headers={"connection": "close"}).text for _ in range(4)]
        assert [_requests_total(text) for text in scrapes] == [asked] * len(scrapes)
        files = {p.name.split("_")[0] for p in (settings.home / "metrics-multiproc").iterdir()}
        assert "counter" in files
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
