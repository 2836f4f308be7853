"""End to end: `ragops up` as the README runs it (on free ports), the Prefect and MLflow APIs, a query, a clean stop.

Real parts throughout: a Prefect server, an MLflow server, the worker serving deployments, the query service, each a
child process of `ragops up`. Ctrl-C stops every part within 5 s; a restart reuses the state (nothing re-embedded,
the champion kept); kill -9 of the supervisor leaves no orphan and no port taken.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from pipelines.env import OFFLINE_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STOP_BUDGET_S = 5.0  # Ctrl-C stops every part within this (measured 1.6 s once stopping reaps as it polls)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Up:
    process: subprocess.Popen[str]
    api: int
    prefect: int
    mlflow: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


def _env(home: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGOPS_", "PREFECT_", "MLFLOW_"))}
    env.update(OFFLINE_ENV)
    env.update({"RAGOPS_HOME": str(home), "RAGOPS_CACHE": str(cache), "PYTHONPATH": str(REPO)})
    # The bootstrap's gate run would log its 351 questions as MLflow traces (about 20 s on two cores); that is
    # tested on a small set in tests/integration/test_evaluation.py.
    env["RAGOPS_EVAL__EXAMPLE_TRACES"] = "false"
    return env


def start_up(home: Path, cache: Path, log: Path, ports: tuple[int, int, int]) -> Up:
    api, prefect, mlflow = ports
    argv = [sys.executable, "-m", "flows.cli", "up", "--api-port", str(api)]
    argv += ["--prefect-port", str(prefect), "--mlflow-port", str(mlflow)]
    handle = log.open("w", encoding="utf-8")
    process = subprocess.Popen(
        argv, cwd=REPO, env=_env(home, cache), stdout=handle, stderr=subprocess.STDOUT, text=True
    )
    return Up(process, api, prefect, mlflow, log)


def wait_ready(up: Up, timeout: float = 420.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if up.process.poll() is not None:
            pytest.fail(f"ragops up exited with {up.process.returncode}:\n{up.output()[-4000:]}")
        if "ragops is up" in up.output():
            return
        time.sleep(1)
    pytest.fail(f"ragops up not ready in {timeout} s:\n{up.output()[-4000:]}")


def listening(ports: list[int]) -> set[int]:
    """The ports among ``ports`` that something still listens on."""
    found = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in ports:
            found.add(conn.laddr.port)
    return found


def cmdline(proc: psutil.Process) -> list[str]:
    """The command line, empty for a process that has exited meanwhile (short-lived helpers do)."""
    try:
        return proc.cmdline()
    except psutil.NoSuchProcess:
        return []


def stop(up: Up) -> list[psutil.Process]:
    children = up.descendants()
    up.process.send_signal(signal.SIGINT)
    up.process.wait(timeout=90)
    _, alive = psutil.wait_procs(children, timeout=20)
    return alive


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[tuple[Up, Path]]:
    root = tmp_path_factory.mktemp("up")
    up = start_up(root / "home", shared_cache, root / "up-1.log", (_free_port(), _free_port(), _free_port()))
    try:
        wait_ready(up)
        yield up, root
    finally:
        if up.process.poll() is None:
            stop(up)


def test_prefect_lists_the_deployments_with_their_schedules(platform: tuple[Up, Path]) -> None:
    up, _ = platform
    response = httpx.post(f"http://127.0.0.1:{up.prefect}/api/deployments/filter", json={}, timeout=30)
    response.raise_for_status()
    flows = {
        f["id"]: f["name"]
        for f in httpx.post(f"http://127.0.0.1:{up.prefect}/api/flows/filter", json={}, timeout=30).json()
    }
    found = {
        f"{flows[d['flow_id']]}/{d['name']}": [s["schedule"].get("cron") for s in d.get("schedules", [])]
        for d in response.json()
    }
    assert found["ingest/hourly"] == ["0 * * * *"]
    assert found["evaluate/nightly-champion"] == ["0 2 * * *"]
    assert found["retrain/weekly"] == ["0 3 * * 0"]
    assert found["promote/manual"] == [] and found["rollback/manual"] == []
    (monitor,) = [d for d in response.json() if flows[d["flow_id"]] == "monitor"]
    assert monitor["name"] == "every-15-min"
    assert [s["schedule"].get("interval") for s in monitor["schedules"]] == [900.0]
    runs = httpx.post(f"http://127.0.0.1:{up.prefect}/api/flow_runs/filter", json={}, timeout=30).json()
    assert any(flows.get(r["flow_id"]) == "ingest" and r["state_type"] == "COMPLETED" for r in runs)


def test_mlflow_lists_experiments_and_the_champion(platform: tuple[Up, Path]) -> None:
    up, _ = platform
    base = f"http://127.0.0.1:{up.mlflow}/api/2.0/mlflow"
    experiments = httpx.post(f"{base}/experiments/search", json={"max_results": 100}, timeout=30).json()
    names = {e["name"] for e in experiments["experiments"]}
    assert {"ingestion", "stacks", "evaluation"} <= names
    model = httpx.get(f"{base}/registered-models/get", params={"name": "rag-stack"}, timeout=30).json()
    aliases = {a["alias"]: a["version"] for a in model["registered_model"].get("aliases", [])}
    assert "champion" in aliases


def test_query_returns_cited_answers_from_the_demo_corpus(platform: tuple[Up, Path]) -> None:
    up, root = platform
    # `ragops up` created an admin key on its first start, readable by its owner only
    key_file = root / "home" / "secrets" / "admin.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    headers = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
    question = {"question": "How long is the NR-200 warranty?"}
    assert httpx.post(f"http://127.0.0.1:{up.api}/v1/query", json=question, timeout=60).status_code == 401
    response = httpx.post(f"http://127.0.0.1:{up.api}/v1/query", json=question, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "24-month" in body["answer"] and body["citations"]
    assert any(c["doc_id"].startswith("products/") or c["doc_id"].startswith("support/") for c in body["citations"])
    assert httpx.get(f"http://127.0.0.1:{up.api}/", timeout=30).status_code == 200  # the playground


def test_second_instance_on_a_taken_port_is_refused_clearly(platform: tuple[Up, Path], shared_cache: Path) -> None:
    up, root = platform
    other = start_up(root / "home2", shared_cache, root / "conflict.log", (_free_port(), up.prefect, _free_port()))
    assert other.process.wait(timeout=120) == 1
    assert f"port {up.prefect} for prefect is already in use" in other.output()
    assert not other.descendants()


def test_stop_leaves_nothing_and_restart_reuses_state(platform: tuple[Up, Path], shared_cache: Path) -> None:
    up, root = platform
    assert {"prefect", "mlflow"} <= {p.name() for p in up.descendants()} | {
        "prefect" for p in up.descendants() if "prefect" in " ".join(p.cmdline())
    } | {"mlflow" for p in up.descendants() if "mlflow" in " ".join(p.cmdline())}
    ports = [up.api, up.prefect, up.mlflow]
    parts = up.descendants()
    started = time.monotonic()
    up.process.send_signal(signal.SIGINT)  # Ctrl-C
    _, alive = psutil.wait_procs(parts, timeout=60)
    took = time.monotonic() - started  # every part stopped (the supervisor's own exit follows)
    assert not alive, [cmdline(p) for p in alive]
    assert listening(ports) == set()
    assert took < STOP_BUDGET_S, f"Ctrl-C took {took:.1f} s to stop every part"
    assert up.process.wait(timeout=60) == 0 and "stopped" in up.output()

    again = start_up(root / "home", shared_cache, root / "up-2.log", (up.api, up.prefect, up.mlflow))
    children: list[psutil.Process] = []
    try:
        wait_ready(again)
        text = again.output()
        assert "0 embeddings computed" in text and "champion stack v1 kept" in text

        # kill -9 of the supervisor: no orphan survives it (each part watches its parent), no port stays taken.
        children = again.descendants()
        names = " ".join(" ".join(cmdline(p)) for p in children)
        assert all(part in names for part in ("prefect", "mlflow", "worker", "api")), names
        os.kill(again.process.pid, signal.SIGKILL)
        again.process.wait(10)
        _, orphans = psutil.wait_procs(children, timeout=10)
        assert not orphans, [cmdline(p) for p in orphans]
        assert listening(ports) == set()
    finally:
        if again.process.poll() is None:
            stop(again)
        for proc in children:  # never leak into the rest of the session, whatever the outcome
            if proc.is_running():
                proc.kill()
