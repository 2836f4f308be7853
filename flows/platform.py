"""The whole platform on one machine: Prefect server, MLflow server, the deployment worker and the query service.

``ragops up`` supervises four child processes (each also startable alone with ``ragops server NAME`` for deployments
that put them on different machines, see ``infra/``):

========  =============================================  =======================================
part      process                                        ready when
========  =============================================  =======================================
prefect   ``prefect server start`` (UI + API, SQLite)     ``GET /api/health``
mlflow    ``mlflow server`` (UI + API, SQLite, artifacts  ``GET /health``
          under ``RAGOPS_HOME``, lean: no job workers)
worker    ``ragops server worker``: every deployment with  the process stays up
          its schedule (``prefect.serve``)
api       ``ragops server api``: the query service        ``GET /healthz`` (``/readyz`` once a
                                                          champion is loaded)
========  =============================================  =======================================

On the first start it bootstraps: ingests the bundled demo corpus (through the ``ingest`` flow, so the run shows in
the Prefect UI), evaluates a default stack on ``demo_qa`` through the gate, registers and promotes it. A restart
reuses everything: the corpus is rebuilt byte-identically, so nothing is re-embedded, and an existing champion is
kept. Children run in their own process groups; Ctrl-C (or SIGTERM) stops them all at once (SIGTERM, SIGKILL after
``STOP_GRACE_S``, so a stop takes under 5 s), a crashed child stops the rest. Children die with the supervisor even
when it is killed with kill -9: a reaper process (:mod:`flows.reaper`) holds a pipe from the supervisor and
terminates every child's process group when the pipe closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from flows.settings import Settings
from pipelines.env import child_env
from pipelines.errors import RagopsError

if TYPE_CHECKING:
    from rag.types import StackConfig

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Prefect's and MLflow's servers take several seconds to shut down gracefully (their uvicorn waits on open
# connections and background services); all they hold is SQLite, which survives a SIGKILL, so the grace is short.
STOP_GRACE_S = 3.0
ACCESS_LOG = re.compile(r'"(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) \S+ HTTP/[\d.]+" [1-4]\d\d')


class PlatformError(RagopsError):
    """A part could not start (port taken, crashed, not healthy in time)."""


@dataclass(frozen=True)
class Ports:
    """Where each part listens (all on 127.0.0.1)."""

    api: int
    prefect: int
    mlflow: int
    llm: int = 8081

    @classmethod
    def from_settings(cls, settings: Settings) -> Ports:
        """The configured ports."""
        return cls(
            api=settings.service.port,
            prefect=settings.prefect.port,
            mlflow=settings.mlflow.port,
            llm=settings.local_llm.port,
        )


@dataclass(frozen=True)
class Part:
    """One child process of the platform."""

    name: str
    argv: Sequence[str]
    url: str | None
    health: str | None
    env: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def mlflow_backend_uri(settings: Settings) -> str:
    """The MLflow server's store: ``RAGOPS_MLFLOW__BACKEND_STORE_URI``, else the SQLite database under home."""
    return settings.mlflow.backend_store_uri or f"sqlite:///{settings.home / 'mlflow' / 'mlflow.db'}"


def platform_env(settings: Settings, ports: Ports) -> dict[str, str]:
    """Settings every child shares: the servers' URLs instead of the embedded defaults."""
    return {
        "RAGOPS_HOME": str(settings.home),
        "RAGOPS_CACHE": str(settings.cache_dir),
        "RAGOPS_PREFECT__API_URL": f"http://{LOOPBACK}:{ports.prefect}/api",
        "RAGOPS_MLFLOW__TRACKING_URI": f"http://{LOOPBACK}:{ports.mlflow}",
        "PREFECT_API_URL": f"http://{LOOPBACK}:{ports.prefect}/api",
    }


def server_argv(settings: Settings, name: str, port: int, host: str = LOOPBACK) -> list[str]:
    """The command line of the Prefect or MLflow server (``ragops server prefect|mlflow`` execs it)."""
    python = sys.executable
    if name == "prefect":
        return [python, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    if name == "mlflow":
        return [
            python,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            mlflow_backend_uri(settings),
            "--artifacts-destination",
            settings.mlflow_artifacts_dir.as_uri(),
            "--serve-artifacts",
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            "1",
        ]
    raise ValueError(name)


SERVER_ENV: Mapping[str, Mapping[str, str]] = {
    "prefect": {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true"},
    "mlflow": {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
}


def uses_local_llm(config: StackConfig, ports: Ports) -> bool:
    """Whether a stack answers with the LLM ``ragops up`` can start (``ragops server llm`` on this machine)."""
    from urllib.parse import urlsplit

    if config.answerer.kind != "llm" or not config.llm.base_url:
        return False
    url = urlsplit(config.llm.base_url)
    return url.hostname in ("127.0.0.1", "localhost", "::1") and url.port == ports.llm


def parts(settings: Settings, ports: Ports) -> list[Part]:
    """The children, in start order (the llm part only when asked for or the champion stack uses it)."""
    python = sys.executable
    shared = platform_env(settings, ports)
    return [
        Part(
            "prefect",
            server_argv(settings, "prefect", ports.prefect),
            f"http://{LOOPBACK}:{ports.prefect}",
            "/api/health",
            {**shared, **SERVER_ENV["prefect"]},
            ports.prefect,
        ),
        Part(
            "mlflow",
            server_argv(settings, "mlflow", ports.mlflow),
            f"http://{LOOPBACK}:{ports.mlflow}",
            "/health",
            {**shared, **SERVER_ENV["mlflow"]},
            ports.mlflow,
        ),
        Part(
            "llm",
            [python, "-m", "flows.cli", "server", "llm", "--port", str(ports.llm)],
            f"http://{LOOPBACK}:{ports.llm}",
            "/health",
            shared,
            ports.llm,
        ),
        Part("worker", [python, "-m", "flows.cli", "server", "worker"], None, None, shared),
        Part(
            "api",
            [python, "-m", "flows.cli", "server", "api", "--port", str(ports.api)],
            f"http://{LOOPBACK}:{ports.api}",
            "/healthz",
            shared,
            ports.api,
        ),
    ]


class Child:
    """A running part: its process, its log file, and a thread copying its output to the log and the console."""

    def __init__(self, part: Part, settings: Settings, echo: Callable[[str], None]) -> None:
        self.part = part
        self.log_path = settings.logs_dir / f"{part.name}.log"
        env = child_env(settings, part.env)
        repo = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
        self._log: IO[str] = self.log_path.open("a", encoding="utf-8")
        self.process = subprocess.Popen(
            list(part.argv),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as a unit, not hit by the terminal's Ctrl-C
            text=True,
            errors="replace",
        )
        self._echo = echo
        self.tail: list[str] = []
        self._thread = threading.Thread(target=self._pump, name=f"log-{part.name}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip()
            self._log.write(line + "\n")
            self._log.flush()
            self.tail = [*self.tail[-19:], line]
            if line.strip() and not ACCESS_LOG.search(line):  # access logs stay in the file: the console is compact
                self._echo(f"[{self.part.name}] {line[:200]}")

    def alive(self) -> bool:
        """The process has not exited."""
        return self.process.poll() is None

    def healthy(self) -> bool:
        """The part answers its health check (a part without one is healthy while alive)."""
        if not self.alive():
            return False
        if self.part.health is None or self.part.url is None:
            return True
        import httpx

        try:
            return httpx.get(self.part.url + self.part.health, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        """After the group is gone: reap the process, finish copying its output."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1)
        self._thread.join(timeout=2)
        self._log.close()


def stop_children(children: Sequence[Child], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM every child's group at once, SIGKILL the groups still alive after ``grace_s``."""
    from flows.reaper import terminate_groups

    def reap() -> None:
        for child in children:
            child.process.poll()  # waits for an exited leader, so its group can empty

    terminate_groups([child.process.pid for child in children], grace_s, reap)
    for child in children:
        child.close()


class Reaper:
    """The :mod:`flows.reaper` process: kills the children's groups if this process dies without stopping them."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flows.reaper"],
            stdin=subprocess.PIPE,
            text=True,
            start_new_session=True,  # not hit by the terminal's Ctrl-C nor by a kill of our process group
        )

    def watch(self, pgid: int) -> None:
        """Add a child's process group."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{pgid}\n")
        self.process.stdin.flush()

    def close(self) -> None:
        """Our children are stopped: end its input (it finds nothing left to kill) and wait for it."""
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        try:
            self.process.wait(STOP_GRACE_S + 2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Supervisor:
    """Start, watch and stop the parts of the platform."""

    settings: Settings
    ports: Ports
    echo: Callable[[str], None]
    children: list[Child] = field(default_factory=list)
    reaper: Reaper | None = None

    def check_ports(self, names: Sequence[str] = ("prefect", "mlflow", "worker", "api")) -> None:
        """Refuse to start when a port is taken (naming the part and the option that moves it)."""
        for part in parts(self.settings, self.ports):
            if part.name in names and part.port is not None and not port_free(part.port):
                raise PlatformError(
                    f"port {part.port} for {part.name} is already in use (another `ragops up`?); "
                    f"choose another with --{part.name if part.name != 'api' else 'api'}-port"
                )

    def start(self, names: Sequence[str], *, timeout_s: float = 180.0) -> dict[str, float]:
        """Start the named parts and wait until each is healthy; returns seconds to ready per part."""
        wanted = [p for p in parts(self.settings, self.ports) if p.name in names]
        started = time.monotonic()
        pending = {}
        if self.reaper is None:
            self.reaper = Reaper()  # before any child, so no child can outlive us unwatched
        for part in wanted:
            child = Child(part, self.settings, self.echo)
            self.children.append(child)
            self.reaper.watch(child.process.pid)
            pending[part.name] = child
        ready: dict[str, float] = {}
        while pending:
            for name, child in list(pending.items()):
                if not child.alive():
                    raise PlatformError(self.crash_message(child))
                if child.healthy():
                    ready[name] = time.monotonic() - started
                    where = f" at {child.part.url}" if child.part.url else ""
                    self.echo(f"{name} ready{where} ({ready[name]:.1f} s)")
                    del pending[name]
            if time.monotonic() - started > timeout_s:
                names_left = ", ".join(pending)
                raise PlatformError(f"{names_left} not healthy after {timeout_s:.0f} s; see {self.settings.logs_dir}")
            time.sleep(0.3)
        return ready

    def crash_message(self, child: Child) -> str:
        """What to tell the user when a child died."""
        code = child.process.returncode
        tail = "\n".join(f"    {line}" for line in child.tail[-8:])
        return f"{child.part.name} exited with code {code}; last lines of {child.log_path}:\n{tail}"

    def watch(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set or a child crashes (then raise)."""
        while not stop.wait(0.5):
            for child in self.children:
                if not child.alive():
                    raise PlatformError(self.crash_message(child))

    def stop_all(self) -> None:
        """Stop every child at once (within ``STOP_GRACE_S`` plus a moment), then the reaper."""
        stop_children(self.children)
        self.children.clear()
        if self.reaper is not None:
            self.reaper.close()
            self.reaper = None


def bootstrap(settings: Settings, echo: Callable[[str], None]) -> dict[str, Any]:
    """First start: demo corpus ingested, a default stack evaluated through the gate and promoted (idempotent)."""
    from evaluation.deploy import evaluate_stack, promote_gated
    from flows.ingest import ingest_flow
    from pipelines.demo import build_demo_corpus
    from pipelines.index import VectorIndex
    from rag.stack import StackRegistry
    from rag.types import StackConfig

    corpus = settings.home / "demo-corpus"
    build_demo_corpus(corpus, overwrite=True)
    echo(f"ingesting the demo corpus {corpus} (flow run in the Prefect UI)")
    report = ingest_flow(source=str(corpus))
    out: dict[str, Any] = {"ingest": {k: report[k] for k in ("documents_new", "embeddings_computed", "points_total")}}
    echo(
        f"ingested: {report['documents_new']} new documents, {report['embeddings_computed']} embeddings computed, "
        f"{report['points_total']} points"
    )
    registry = StackRegistry(settings)
    champion = registry.champion_version()
    if champion is not None:
        echo(f"champion stack v{champion} kept")
        out["champion"] = champion
        return out
    current = VectorIndex(settings).current()
    if current is None:
        raise PlatformError("the demo corpus ingest published no index; see the ingest flow run")
    config = StackConfig.for_index(current, name="default-hybrid", retrieval={"mode": "hybrid"})
    version = registry.register(config, description="bootstrap: hybrid extractive stack", actor="ragops up")
    echo(f"evaluating stack v{version} on the gate's test set")
    outcome = evaluate_stack(settings, registry, version, gate=True)
    assert outcome.gate is not None
    echo(outcome.gate.summary())
    if not outcome.gate.passed:
        raise PlatformError(f"the bootstrap stack v{version} failed its gate; nothing promoted (run {outcome.run_id})")
    promote_gated(settings, registry, version, actor="ragops up", reason="bootstrap: first champion")
    echo(f"stack v{version} promoted to champion")
    out["champion"] = version
    return out
