"""Fault scenarios of ``bench/load.py`` (issue 16's ``faults``): each breaks one part under traffic and counts what
survived and what was lost.

Every scenario drives real traffic (questions, some streamed, each answer rated) against a real ``ragops serve``,
breaks one part for real (kill -9, a stopped server, an LLM that never answers), and reports
``{"survived": bool, "lost": int, ...}``:

- ``survived``: the service kept answering (200, announced degradations allowed) or refused only with 429/503 and
  ``Retry-After`` while the part was down, and answered again after it came back (or without it);
- ``lost``: acknowledged work missing afterwards: feedback answered 200 but absent from the request store, or an
  ingestion whose documents did not land exactly once.

Redis and PostgreSQL are Debian's servers on free loopback ports (``tests/fixtures/datastores.py``'s starters).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.query import wait_ready
from tests.fixtures.datastores import PostgresServer, RedisServer, free_port

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench.faults")

REFUSED = (429, 503)
KILLED_MID_REQUEST = tuple(
    f"{what}{error}" for what in ("", "feedback ") for error in ("RemoteProtocolError", "ReadError", "ConnectError")
) + ("stream cut",)
"""What a client of a killed worker sees for the requests that worker held: not acknowledged, so nothing is lost."""


@dataclass
class Traffic:
    """Questions (every ``stream_every``-th streamed) from ``clients`` threads, each answer then rated, until stopped.

    Counts statuses by phase (``before``/``during``/``after`` the fault) and keeps every acknowledged rating."""

    url: str
    headers: dict[str, str]
    questions: Sequence[str]
    clients: int = 2
    stream_every: int = 3
    phase: str = "before"
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    degraded: Counter[str] = field(default_factory=Counter)
    acked: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _count(self, status: str) -> None:
        with self._lock:
            self.statuses.setdefault(self.phase, Counter())[status] += 1

    def _ask(self, client: Any, question: str, stream: bool) -> dict[str, Any] | None:
        import httpx

        try:
            if not stream:
                response = client.post("/v1/query", json={"question": question})
                if response.status_code != 200:
                    ok = response.status_code in REFUSED and "Retry-After" in response.headers
                    self._count(f"{response.status_code}{'' if ok else ' without Retry-After'}")
                    return None
                self._count("200")
                return dict(response.json())
            with client.stream("POST", "/v1/query", json={"question": question, "stream": True}) as response:
                if response.status_code != 200:
                    response.read()
                    ok = response.status_code in REFUSED and "Retry-After" in response.headers
                    self._count(f"{response.status_code}{'' if ok else ' without Retry-After'}")
                    return None
                done: dict[str, Any] | None = None
                event = ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and event in ("done", "blocked"):
                        done = json.loads(line.split(":", 1)[1])
                self._count("200 stream" if done is not None else "stream cut")
                return done
        except httpx.HTTPError as exc:
            self._count(type(exc).__name__)
            return None

    def _client(self, n: int) -> None:
        import httpx

        i = n
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as client:
            while not self._stop.is_set():
                i += self.clients
                body = self._ask(client, self.questions[i % len(self.questions)], i % self.stream_every == 0)
                if body is None:
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.degraded.update(body.get("degraded") or [])
                if body.get("blocked"):  # a refusal by a guardrail is no answer to rate (the service says 404)
                    continue
                rating = "up" if i % 2 else "down"
                try:
                    rated = client.post("/v1/feedback", json={"request_id": body["request_id"], "rating": rating})
                except httpx.HTTPError as exc:
                    self._count(f"feedback {type(exc).__name__}")
                    continue
                if rated.status_code == 200:
                    with self._lock:
                        self.acked[body["request_id"]] = rating
                elif rated.status_code in REFUSED and "Retry-After" in rated.headers:
                    self._count("feedback refused")  # the rating was not taken, and the caller was told when to retry
                else:
                    self._count(f"feedback {rated.status_code}")

    def __enter__(self) -> Traffic:
        for n in range(self.clients):
            thread = threading.Thread(target=self._client, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def answered_after(self) -> int:
        after = self.statuses.get("after", Counter())
        return after["200"] + after["200 stream"]

    def unexpected(self, allowed: Sequence[str] = ()) -> dict[str, int]:
        """Outcomes that are neither answers nor refusals with Retry-After, nor ``allowed``."""
        fine = {"200", "200 stream", "429", "503", "feedback refused", *allowed}
        return {f"{p}: {k}": v for p, c in self.statuses.items() for k, v in c.items() if k not in fine}

    def lost_feedback(self, store_url: str) -> int:
        """Ratings answered 200 that the request store does not hold."""
        from rag.store.store import RequestStore

        store = RequestStore(store_url, purge_interval_s=None)
        try:
            missing = 0
            for request_id, rating in self.acked.items():
                record = store.get(request_id)
                if record is None or record.feedback is None or str(record.feedback.rating) != rating:
                    missing += 1
            return missing
        finally:
            store.close()

    def report(self, store_url: str, allowed: Sequence[str] = ()) -> dict[str, Any]:
        unexpected = self.unexpected(allowed)
        return {
            "survived": not unexpected and self.answered_after() > 0,
            "lost": self.lost_feedback(store_url),
            "ratings_acknowledged": len(self.acked),
            "outcomes": {p: dict(c) for p, c in self.statuses.items()},
            "unexpected": unexpected,
            "degraded": dict(self.degraded),
        }


def run_phases(traffic: Traffic, fault: Callable[[], None], recover: Callable[[], None] | None, hold_s: float) -> None:
    """``hold_s`` of traffic before the fault, during it, and after ``recover`` (if any)."""
    with traffic:
        time.sleep(hold_s)
        traffic.phase = "during"
        fault()
        time.sleep(hold_s)
        if recover is not None:
            recover()
        traffic.phase = "after"
        time.sleep(hold_s)


@contextlib.contextmanager
def silent_llm() -> Iterator[str]:
    """An OpenAI-compatible URL whose server accepts connections and never answers (an LLM timing out)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(256)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def children(pid: int) -> list[int]:
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    return []


def alive(pids: Sequence[int]) -> list[int]:
    import psutil

    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@dataclass(frozen=True)
class FaultContext:
    """What every scenario needs: the demo platform's settings and home, a reader key and the questions."""

    settings: Any
    home: Path
    headers: dict[str, str]
    questions: Sequence[str]
    serve: Callable[..., Any]  # bench.load.serve
    hold_s: float

    @property
    def store_url(self) -> str:
        return str(self.settings.store.resolve_url(self.settings.home))


def api_worker_kill(ctx: FaultContext) -> dict[str, Any]:
    """kill -9 of one of two API workers while streams and ratings are in flight."""
    with ctx.serve(ctx.settings, ctx.home, 2) as service:
        traffic = Traffic(service.url, ctx.headers, ctx.questions, clients=4, stream_every=2)
        killed: list[int] = []

        def kill() -> None:
            workers = children(service.process.pid)
            victim = max(workers)  # a worker, not the resource tracker (started first)
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

        run_phases(traffic, kill, None, ctx.hold_s)
        report = traffic.report(ctx.store_url, allowed=KILLED_MID_REQUEST)
        report["killed_pid"] = killed[0]
        report["workers_after"] = len(children(service.process.pid))
    return report


def llm_timeout(ctx: FaultContext) -> dict[str, Any]:
    """The stack's LLM accepts connections and never answers: extractive answers after the LLM's timeout."""
    from rag.stack import StackRegistry

    registry = StackRegistry(ctx.settings)
    champion_version, config = registry.champion()
    with silent_llm() as base_url:
        llm_stack = config.model_copy(
            update={
                "name": "bench-load-llm",
                "answerer": config.answerer.model_copy(update={"kind": "llm"}),
                "llm": config.llm.model_copy(update={"base_url": base_url, "model": "silent", "timeout_s": 1.0}),
            }
        )
        version = registry.register(llm_stack, description="bench/load.py: an LLM that times out")
        registry.promote(version, actor="bench", reason="fault: llm timeout")
        try:
            with ctx.serve(ctx.settings, ctx.home, 1) as service:
                traffic = Traffic(service.url, ctx.headers, ctx.questions, clients=4)
                run_phases(traffic, lambda: None, None, ctx.hold_s)
                report = traffic.report(ctx.store_url)
        finally:
            registry.promote(champion_version, actor="bench", reason="fault scenario over")
    report["survived"] = bool(report["survived"] and report["degraded"].get("llm_fallback"))
    return report


def redis_down(ctx: FaultContext) -> dict[str, Any]:
    """Redis (shared rate limits and answer cache) stops mid-traffic: per-worker limits, no cache."""
    with RedisServer.start(ctx.home.parent) as redis:
        env = {
            "RAGOPS_LIMITS__REDIS_URL": redis.url,
            "RAGOPS_LIMITS__REQUESTS_PER_MINUTE": "100000",
            "RAGOPS_ANSWER_CACHE__ENABLED": "true",
            "RAGOPS_ANSWER_CACHE__URL": redis.url,
        }
        with ctx.serve(ctx.settings, ctx.home, 2, env) as service:
            traffic = Traffic(service.url, ctx.headers, ctx.questions)
            run_phases(traffic, redis.stop, None, ctx.hold_s)
            report = traffic.report(ctx.store_url)
    report["survived"] = bool(report["survived"] and report["degraded"].get("limits_per_worker"))
    return report


def mlflow_down(ctx: FaultContext) -> dict[str, Any]:
    """The MLflow tracking server the service reads the champion from is killed: the loaded stack keeps serving."""
    from pipelines.env import child_env

    port = free_port()
    log = (ctx.home.parent / "mlflow.log").open("wb")
    env = child_env(ctx.settings, {"RAGOPS_HOME": str(ctx.home)})
    mlflow = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "server", "mlflow", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", mlflow, 120, path="/health")
        extra = {"RAGOPS_MLFLOW__TRACKING_URI": f"http://127.0.0.1:{port}", "RAGOPS_SERVICE__RELOAD_INTERVAL_S": "1"}
        with ctx.serve(ctx.settings, ctx.home, 2, extra) as service:
            traffic = Traffic(service.url, ctx.headers, ctx.questions)
            run_phases(traffic, lambda: os.killpg(mlflow.pid, signal.SIGKILL), None, ctx.hold_s)
            report = traffic.report(ctx.store_url)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(mlflow.pid, signal.SIGKILL)
        mlflow.wait(timeout=30)
        log.close()
    report["survived"] = bool(report["survived"] and report["degraded"].get("registry_unreachable"))
    return report


def postgres_restart(ctx: FaultContext) -> dict[str, Any]:
    """The request store on PostgreSQL restarts mid-traffic: ratings answered 200 are all kept."""
    with PostgresServer.start() as postgres:
        env = {"RAGOPS_STORE__URL": postgres.url}
        with ctx.serve(ctx.settings, ctx.home, 2, env) as service:
            traffic = Traffic(service.url, ctx.headers, ctx.questions)
            run_phases(traffic, postgres.stop, postgres.restart, ctx.hold_s)
            report = traffic.report(postgres.url)
    return report


def supervisor_kill(ctx: FaultContext) -> dict[str, Any]:
    """kill -9 of the ``ragops up`` supervisor: every part it started is gone within 5 s (no orphan)."""
    from pipelines.env import child_env

    api = free_port()
    argv = [sys.executable, "-m", "flows.cli", "up", "--no-bootstrap", "--no-llm", "--api-port", str(api)]
    argv += ["--prefect-port", str(free_port()), "--mlflow-port", str(free_port())]
    log = (ctx.home.parent / "up.log").open("wb")
    env = child_env(ctx.settings, {"RAGOPS_HOME": str(ctx.home)})
    up = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_ready(f"http://127.0.0.1:{api}", up, 300)
            ready = True
        except RuntimeError:
            logger.exception("ragops up did not become ready")
            ready = False
        parts = children(up.pid)
        os.kill(up.pid, signal.SIGKILL)
        up.wait(timeout=10)
        gone_by = time.monotonic() + 5
        while alive(parts) and time.monotonic() < gone_by:
            time.sleep(0.1)
        orphans = alive(parts)
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return {"survived": ready and not orphans, "lost": 0, "parts": len(parts), "orphans_after_5s": len(orphans)}
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(timeout=10)
        log.close()


def ingest_worker_kill(ctx: FaultContext) -> dict[str, Any]:
    """kill -9 of an ingestion mid-run, then the run again: every document lands exactly once."""
    from flows.settings import Settings
    from pipelines.env import child_env
    from pipelines.index import VectorIndex

    corpus = ctx.home.parent / "corpus"
    fresh = ctx.home.parent / "ingest-home"
    env = child_env(ctx.settings, {"RAGOPS_HOME": str(fresh)})
    argv = [sys.executable, "-m", "flows.cli", "ingest", str(corpus)]
    killed = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(ctx.hold_s)
    was_running = killed.poll() is None
    killed.kill()
    killed.wait(timeout=30)
    again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, timeout=900)
    reference = VectorIndex(ctx.settings).current()
    landed = VectorIndex(Settings(home=fresh)).current()
    assert reference is not None
    if landed is None:
        why = again.stderr.decode(errors="replace").strip().splitlines()[-3:]
        return {"survived": False, "lost": reference.documents, "killed_mid_run": was_running, "rerun": why}
    return {
        "survived": again.returncode == 0,
        "lost": abs(reference.documents - landed.documents) + abs(reference.points - landed.points),
        "killed_mid_run": was_running,
        "documents": landed.documents,
        "points": landed.points,
        "reference_points": reference.points,
    }


SCENARIOS: dict[str, Callable[[FaultContext], dict[str, Any]]] = {
    "api_worker_kill_mid_stream": api_worker_kill,
    "ingest_worker_kill": ingest_worker_kill,
    "supervisor_kill": supervisor_kill,
    "mlflow_down": mlflow_down,
    "redis_down": redis_down,
    "postgres_restart": postgres_restart,
    "llm_timeout": llm_timeout,
}


def run_faults(ctx: FaultContext, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Every scenario (or ``only`` those), each reported even when it crashes (``survived`` False, the error)."""
    out: dict[str, Any] = {}
    for name, scenario in SCENARIOS.items():
        if only and name not in only:
            continue
        logger.info("fault: %s", name)
        started = time.monotonic()
        try:
            out[name] = scenario(ctx)
        except Exception as exc:  # a scenario's crash is a finding, reported beside the others
            logger.exception("fault scenario %s failed", name)
            out[name] = {"survived": False, "lost": None, "error": f"{type(exc).__name__}: {exc}"}
        out[name]["seconds"] = round(time.monotonic() - started, 1)
        logger.info("fault %s: %s", name, out[name])
    return out
