"""`ragops up` never leaves orphans: its children die with it even when it is killed with kill -9, and Ctrl-C stops
everything within 5 s.

The platform is started without the bootstrap (no ingest, no evaluation): what is tested is process supervision, so
the supervisor is stopped while it waits for a champion, after all four parts are healthy.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.integration.test_platform import REPO, Up, _env, _free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STOP_BUDGET_S = 5.0


def start_parts(home: Path, cache: Path, log: Path) -> Up:
    """`ragops up --no-bootstrap` on free ports, returned once all four parts are healthy."""
    import subprocess
    import sys

    api, prefect, mlflow = _free_port(), _free_port(), _free_port()
    argv = [sys.executable, "-m", "flows.cli", "up", "--no-bootstrap", "--api-port", str(api)]
    argv += ["--prefect-port", str(prefect), "--mlflow-port", str(mlflow)]
    handle = log.open("w", encoding="utf-8")
    process = subprocess.Popen(argv, cwd=REPO, env=_env(home, cache), stdout=handle, stderr=subprocess.STDOUT)
    up = Up(process, api, prefect, mlflow, log)  # type: ignore[arg-type]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ragops up exited with {process.returncode}:\n{up.output()[-4000:]}")
        text = up.output()
        if all(f"{name} ready" in text for name in ("prefect", "mlflow", "worker", "api")):
            return up
        time.sleep(0.5)
    pytest.fail(f"parts not healthy in time:\n{up.output()[-4000:]}")


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


@pytest.fixture
def up(tmp_path: Path, shared_cache: Path) -> Iterator[tuple[Up, list[psutil.Process]]]:
    started = start_parts(tmp_path / "home", shared_cache, tmp_path / "up.log")
    descendants = started.descendants()
    try:
        yield started, descendants
    finally:
        if started.process.poll() is None:
            started.process.kill()
        for proc in descendants:  # never leak into the rest of the session, whatever the outcome
            if proc.is_running():
                proc.kill()


def test_children_die_with_a_killed_supervisor(up: tuple[Up, list[psutil.Process]]) -> None:
    platform, descendants = up
    names = " ".join(" ".join(cmdline(p)) for p in descendants)
    assert "prefect" in names and "mlflow" in names and "worker" in names and "api" in names
    ports = [platform.api, platform.prefect, platform.mlflow]
    assert listening(ports) == set(ports)

    os.kill(platform.process.pid, signal.SIGKILL)
    platform.process.wait(10)
    _, alive = psutil.wait_procs(descendants, timeout=10)
    assert not alive, [cmdline(p) for p in alive]
    assert listening(ports) == set()


def test_ctrl_c_stops_everything_within_five_seconds(up: tuple[Up, list[psutil.Process]]) -> None:
    platform, descendants = up
    ports = [platform.api, platform.prefect, platform.mlflow]
    started = time.monotonic()
    platform.process.send_signal(signal.SIGINT)
    platform.process.wait(60)
    _, alive = psutil.wait_procs(descendants, timeout=60)
    took = time.monotonic() - started
    assert not alive, [cmdline(p) for p in alive]
    assert platform.process.returncode == 0 and "stopped" in platform.output()
    assert listening(ports) == set()
    assert took < STOP_BUDGET_S, f"stop took {took:.1f} s"
