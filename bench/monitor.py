"""Monitoring benchmark: whether the monitor catches injected faults in a live service, what recording a request
costs the request path, and how fast the monitor's window query is on a large request store.

Usage: ``python bench/monitor.py [--quick] [--interval S] [--records N] [--requests N] [--db PATH]
[--skip-faults]``. Prints one JSON object. ``--quick``: about six minutes on two cores, five of them the drill
(``window_query_s_1m_records`` keeps its name with its 200,000 records).

0. The fault drill (``faults``, ``interval_s``, ``false_alerts``): the demo corpus is ingested into a fresh
   RAGOPS_HOME and served by the real app under uvicorn on loopback, with an LLM stack whose model is an
   OpenAI-compatible server on loopback (tests/fixtures/fake_openai.py) that answers with the context sentence
   closest to the question, cited, at $3 / $15 per million tokens (output guardrails off:
   :func:`_drill_guardrails`). Replay threads ask demo_qa's questions at ``--rps`` (adversarial and edge items
   held back) and rate 60% of the answers (5% down). The monitor
   (``evaluation.monitor.run_window``, the flow's code, drift test included) runs every ``interval_s`` over the last
   ``interval_s`` through its own connection to the store. After three calibration windows and
   ``--steady-intervals`` steady ones, each fault is switched on half-way through an interval, until the monitor
   names its rule or two intervals pass: ``latency_spike`` (the LLM answers late by 1.2x the p99 threshold, 3 s at
   least), ``error_burst`` (30% of index searches fail: the service's vector port is wrapped by code,
   :func:`drill_vectors`, as no setting can), ``cost_jump`` (1,500-word answers), ``guardrail_surge`` (70% of the
   traffic is demo_qa's prompt-injection items), ``thumbs_down_surge`` (70% of ratings down) and ``query_drift``
   (SciFact's biomedical claims instead of demo_qa). Per fault: ``alerted``, ``seconds_to_alert`` (from the switch
   to the end of the monitor run that named the rule) and ``monitor_runs_to_alert`` (1: the first run whose window
   held the fault, half of it). ``false_alerts``: the breaches of the steady windows and of windows that begin a
   whole interval after a fault ended. The latency thresholds come from the calibration windows
   (:meth:`Monitor.calibrate_latency`: twice their worst p95 and p99, the defaults at least); every other threshold
   is the default.
1. ``record_overhead_p50_ms``: per request, ``ServiceMetrics.observe_record`` plus ``RequestStore.record`` (the
   record stage's whole job) on a realistic record (8 stage timings, 5 cited chunks with texts, 3 guardrail
   verdicts). Baseline measured in the same run: building the same frozen record (``build_p50_ms``), which the
   stage pays anyway; and metrics alone / store enqueue alone. The writer thread runs meanwhile (as in the
   service), so its CPU competes with the measured loop. Target: record + metrics <= 0.3 ms p50. Also the metrics
   in multi-process mode (``PROMETHEUS_MULTIPROC_DIR``, several workers), measured in a child process.
2. ``window_query_s_1m_records``: ``RequestStore.window`` (request count, error rate, cost per request, guardrail
   trigger rate, abstention rate, thumbs-down share and exact p50/p95/p99 latency) over a window holding all N
   records (default 1,000,000, spread over 30 days) of a SQLite store; also over the last 24 h and the last 15
   minutes (the monitor's interval). Baseline: a bare ``count(*)`` of the store (``count_all_s``). Target: < 1 s.
   The store is filled by bulk insert (SQLAlchemy executemany of 20,000 rows per transaction into the store's own
   table; the writer thread would take minutes for a million records); ``--db`` keeps the filled database across
   runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

logger = logging.getLogger("bench.monitor")

DAY = 86400.0
CALIBRATION_WINDOWS = 3
"""Steady windows whose latency sets the drill's latency thresholds (not counted for false alerts)."""
LATENCY_SPIKE_S = 3.0
"""The latency fault: seconds the LLM waits before answering (at least; see :meth:`Monitor.calibrate_latency`)."""
DEFAULT_OFF_DOMAIN = REPO.parent / "shared" / "datasets" / "scifact" / "queries.jsonl"


def _record(i: int, at: float) -> object:
    from rag.feedback import CitedChunk
    from rag.store import RequestRecord

    return RequestRecord(
        request_id=f"{i:032x}",
        at=at,
        principal="bench",
        tenant="acme",
        question="What does the warranty cover when the device is dropped?",
        answer="The warranty covers manufacturing defects, not accidental damage [1].",
        stack_name="default",
        stack_version=7,
        index_version=3,
        abstained=i % 17 == 0,
        status=500 if i % 101 == 0 else 200,
        error="answer_error" if i % 101 == 0 else None,
        timings_ms={
            "authenticate": 0.01,
            "limit": 0.01,
            "check_input": 0.4,
            "cache": 0.05,
            "retrieve": 9.0 + (i % 13),
            "answer": 2.0,
            "check_output": 0.3,
            "record": 0.05,
            "total": 12.0 + (i % 13),
        },
        prompt_tokens=900 + i % 50,
        completion_tokens=40 + i % 9,
        cost_usd=0.0004,
        verdicts={"injection": "pass", "pii_input": "pass", "pii_output": "redact" if i % 7 == 0 else "pass"},
        citations=tuple(
            CitedChunk(n, f"chunk-{i % 997}-{n}", f"doc-{i % 211}", "Warranty", "warranty.md", "text " * 60)
            for n in range(1, 6)
        ),
    )


def _p50_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 4)


def measure_overhead(requests: int, folder: Path) -> dict[str, float]:
    """Per-request cost of the record stage's work, and of its parts."""
    from rag.monitoring.metrics import ServiceMetrics
    from rag.store import RequestStore

    metrics = ServiceMetrics()
    store = RequestStore(f"sqlite:///{folder / 'overhead.db'}", queue_size=requests + 10)
    now = time.time()
    build, observe, enqueue, both = [], [], [], []
    clock = time.perf_counter
    try:
        for i in range(requests):
            t0 = clock()
            record = _record(i, now)
            t1 = clock()
            metrics.observe_record(record)  # type: ignore[arg-type]
            t2 = clock()
            store.record(record)  # type: ignore[arg-type]
            t3 = clock()
            build.append(t1 - t0)
            observe.append(t2 - t1)
            enqueue.append(t3 - t2)
            both.append(t3 - t1)
            if i % 200 == 199:
                time.sleep(0.002)  # let the writer run as it would between requests
        t_close = clock()
        store.close()
        close_s = clock() - t_close
    finally:
        store.close()
    return {
        "record_overhead_p50_ms": _p50_ms(both),
        "record_overhead_p99_ms": round(sorted(both)[int(len(both) * 0.99)] * 1000, 4),
        "metrics_p50_ms": _p50_ms(observe),
        "store_enqueue_p50_ms": _p50_ms(enqueue),
        "build_p50_ms": _p50_ms(build),
        "overhead_to_build_ratio": round(statistics.median(both) / statistics.median(build), 2),
        "drain_on_close_s": round(close_s, 3),
    }


_MULTIPROCESS_CHILD = """
import statistics, sys, time
sys.path.insert(0, {repo!r})
from bench.monitor import _record
from rag.monitoring.metrics import ServiceMetrics
metrics = ServiceMetrics()
now = time.time()
samples = []
for i in range({n}):
    record = _record(i, now)
    t0 = time.perf_counter()
    metrics.observe_record(record)
    samples.append(time.perf_counter() - t0)
print(statistics.median(samples) * 1000)
"""


def measure_multiprocess_metrics(requests: int, folder: Path) -> float:
    """p50 ms of ``observe_record`` in multi-process mode (samples written to mmap files), in a child process:
    prometheus-client picks its value store when imported, so the mode cannot change inside this one."""
    import subprocess

    prom = folder / "prom"
    prom.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    code = _MULTIPROCESS_CHILD.format(repo=str(REPO), n=requests)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return round(float(out.strip().splitlines()[-1]), 4)


def fill(url: str, records: int) -> None:
    """Fill the store's table with ``records`` rows spread evenly over the 30 days before now."""
    from sqlalchemy import create_engine, func, select

    from rag.store import RequestStore
    from rag.store.tables import requests

    RequestStore(url).close()  # creates and migrates
    engine = create_engine(url)
    with engine.connect() as db:
        have = int(db.execute(select(func.count()).select_from(requests)).scalar_one())
    if have >= records:
        engine.dispose()
        return
    now = time.time()
    step = 30 * DAY / records
    chunk = 20_000
    started = time.perf_counter()
    for start in range(have, records, chunk):
        rows = [_record(i, now - 30 * DAY + i * step).to_row() for i in range(start, min(records, start + chunk))]  # type: ignore[attr-defined]
        for n, row in enumerate(rows):
            rated = (start + n) % 50 == 0
            row["feedback_rating"] = ("down" if (start + n) % 150 == 0 else "up") if rated else None
        with engine.begin() as db:
            db.execute(requests.insert(), rows)
    engine.dispose()
    logger.info("filled %d records in %.1f s", records - have, time.perf_counter() - started)


def _figures(stats: object) -> dict[str, float | int | None]:
    """The monitor's window figures from a ``WindowStats``."""
    from rag.store import WindowStats

    assert isinstance(stats, WindowStats)
    return {
        "requests": stats.requests,
        "p50_ms": stats.p50_ms,
        "p95_ms": stats.p95_ms,
        "p99_ms": stats.p99_ms,
        "error_rate": round(stats.error_share, 5),
        "cost_per_request_usd": round(stats.cost_per_request, 6),
        "guardrail_trigger_rate": round(stats.guardrail_trigger_share, 5),
        "abstention_rate": round(stats.abstention_share, 5),
        "thumbs_down_share": round(stats.thumbs_down_share, 5),
    }


def _timed_window(store: object, since: float, until: float, runs: int) -> tuple[float, object]:
    """Median seconds of ``runs`` window queries, and the last result."""
    timings, stats = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        stats = store.window(since, until)  # type: ignore[attr-defined]
        timings.append(time.perf_counter() - t0)
    return statistics.median(timings), stats


def measure_window(url: str, records: int) -> dict[str, object]:
    """The monitor's window query (counts, shares, cost, exact latency percentiles) on a store of ``records``
    rows: over all of them (the headline), over the last 24 h and over the last 15 minutes (the monitor's
    default interval)."""
    from sqlalchemy import create_engine, func, select

    from rag.store import RequestStore
    from rag.store.tables import requests

    fill(url, records)
    store = RequestStore(url)
    now = time.time()
    try:
        all_s, everything = _timed_window(store, 0, now + 1, 3)
        day_s, day = _timed_window(store, now - DAY, now + 1, 5)
        quarter_s, quarter = _timed_window(store, now - 900, now + 1, 5)
        engine = create_engine(url)
        t0 = time.perf_counter()
        with engine.connect() as db:
            db.execute(select(func.count()).select_from(requests)).scalar_one()
        count_s = time.perf_counter() - t0
        engine.dispose()
    finally:
        store.close()
    return {
        "records": everything.requests,  # type: ignore[attr-defined]
        "window_query_s_1m_records": round(all_s, 4),
        "window_figures_1m_records": _figures(everything),
        "window_query_24h_s": round(day_s, 4),
        "window_24h_requests": day.requests,  # type: ignore[attr-defined]
        "window_query_15min_s": round(quarter_s, 4),
        "window_15min_requests": quarter.requests,  # type: ignore[attr-defined]
        "count_all_s": round(count_s, 4),
        "window_to_count_ratio": round(all_s / count_s, 2) if count_s else 0.0,
    }


# ------------------------------------------------------------------------------------------------ fault replay
OFF_DOMAIN_FALLBACK = (
    "What is the boiling point of ethanol at sea level?",
    "Who painted the ceiling of the Sistine Chapel?",
    "How do I make sourdough starter from scratch?",
    "What causes the seasons on Earth?",
    "Which team won the 1998 football world cup?",
    "How many bones are there in the adult human body?",
    "What is the capital city of Mongolia?",
    "How does compound interest work on a savings account?",
)


_PASSAGE = re.compile(r"(?:^|\n\n)\[(\d+)\] ")
_WORD = re.compile(r"[a-z0-9][a-z0-9-]{2,}")


_INJECTION = re.compile(r"ignore|disregard|forget|override|system prompt|instruction", re.IGNORECASE)


@dataclass(frozen=True)
class _GroundedReply:
    """What the fake LLM answers: the first sentence of passage [1] with its citation, as a model that reads its
    context would (so the grounding guardrail passes it); with ``words``, the passages' sentences cited and repeated
    up to that many words (a model that stopped being concise: the cost fault)."""

    words: int

    def __call__(self, prompt: str) -> str:
        from rag.answer import cite_sentence, split_sentences

        context, _, question = prompt.partition("Context:\n")[2].partition("\n\nQuestion:")
        asked = set(_WORD.findall(question.lower()))
        parts = _PASSAGE.split(context)  # ["", "1", text, "2", text, ...]
        cited = [
            (len(asked & set(_WORD.findall(sentence.lower()))), cite_sentence(sentence.strip(), int(n)))
            for n, text in zip(parts[1::2], parts[2::2], strict=True)
            for block in split_sentences(text)
            for sentence in block
            if len(sentence.split()) >= 8  # a sentence, not a heading
        ]
        if not cited:
            return "The answer was not found in the indexed documents."
        if not self.words:
            return max(cited, key=lambda c: c[0])[1]  # the sentence that shares most words with the question
        out: list[str] = []
        while sum(len(s.split()) for s in out) < self.words:
            out.extend(c[1] for c in cited)
        return " ".join(out)


@dataclass
class Traffic:
    """What the replay threads send; the fault drills change it while they run (one assignment at a time)."""

    questions: list[str]
    adversarial: list[str]
    adversarial_share: float = 0.0
    rated_share: float = 0.6
    down_share: float = 0.05


@dataclass
class Fault:
    """One injected fault: what turns it on and off, and the monitor rule that must catch it."""

    name: str
    rule: str
    start: Callable[[], None]
    stop: Callable[[], None]


@dataclass
class Tick:
    """One monitor run: when it ended, the window it covered, how long it took and the rules it found broken."""

    at: float
    since: float
    until: float
    seconds: float
    breaches: tuple[str, ...]
    figures: dict[str, float]


def _demo_questions() -> tuple[list[str], list[str]]:
    """demo_qa's questions: the in-domain replay (all but the adversarial items) and the prompt-injection items."""
    from evaluation.testsets import load_testset

    items = load_testset("demo_qa").items
    # the adversarial items that are prompt injections (the rest are false premises, which no guardrail blocks)
    adversarial = [i.question for i in items if "adversarial" in i.tags and _INJECTION.search(i.question)]
    normal = [i.question for i in items if "adversarial" not in i.tags and "edge" not in i.tags]
    return normal, adversarial


def _off_domain(path: Path | None) -> list[str]:
    """Questions from another domain: SciFact's biomedical claims when the shared data is there."""
    if path is not None and path.is_file():
        from bench._common import iter_jsonl

        return [str(r["text"]) for r in iter_jsonl(path)][:500]
    return list(OFF_DOMAIN_FALLBACK)


def _replay(url: str, headers: dict[str, str], traffic: Traffic, rps: float, stop: threading.Event, seed: int) -> None:
    """One replay thread: ask at ``rps`` (no catching up after a slow answer) and rate some answers."""
    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        next_at = time.monotonic()
        while not stop.is_set():
            if rng.random() < traffic.adversarial_share:
                question = rng.choice(traffic.adversarial)
            else:
                question = rng.choice(traffic.questions)
            try:
                response = client.post("/v1/query", json={"question": question})
                if response.status_code == 200 and rng.random() < traffic.rated_share:
                    rating = "down" if rng.random() < traffic.down_share else "up"
                    client.post("/v1/feedback", json={"request_id": response.json()["request_id"], "rating": rating})
            except httpx.HTTPError:
                logger.warning("replay request failed", exc_info=True)
            next_at = max(next_at + 1.0 / rps, time.monotonic() - 1.0 / rps)
            stop.wait(max(0.0, next_at - time.monotonic()))


class Monitor:
    """``evaluation.monitor.run_window`` every ``interval_s`` over the last ``interval_s`` (the flow's schedule,
    shortened), reading the store the service writes through its own connection, as the flow does."""

    def __init__(self, settings: Any, interval_s: float) -> None:
        from evaluation.monitor import default_embed, open_store, reference_questions

        self.settings = settings
        self.interval_s = interval_s
        self.store = open_store(settings)
        self.embed = default_embed(settings)
        self.reference = reference_questions(settings)
        self.embed(self.reference[:8])  # load the model before the first tick is timed
        self.ticks: list[Tick] = []
        self.next_at = time.time() + interval_s

    def run_until(self, deadline: float, until_rule: str | None = None) -> Tick | None:
        """Run the ticks due before ``deadline``; stop early at the first tick that breaks ``until_rule``."""
        from evaluation.monitor import run_window

        while True:
            now = time.time()
            if self.next_at > deadline:
                time.sleep(max(0.0, deadline - now))
                return None
            time.sleep(max(0.0, self.next_at - now))
            until = time.time()
            self.next_at += self.interval_s
            report = run_window(
                self.settings,
                self.store,
                embed=self.embed,
                reference=self.reference,
                until=until,
                window_minutes=self.interval_s / 60,
            )
            now = time.time()
            tick = Tick(now, report.since, until, now - until, tuple(b.rule for b in report.breaches), report.figures())
            self.ticks.append(tick)
            logger.info("monitor run (%.1f s): %s", tick.seconds, ", ".join(tick.breaches) or "ok")
            if until_rule is not None and until_rule in tick.breaches:
                return tick

    def calibrate_latency(self, ticks: list[Tick]) -> float:
        """Set the latency thresholds from the steady windows ``ticks`` and return the spike's delay (seconds).

        These machines are shared: with other jobs' load a steady replay's p99 can reach the SLO defaults (p95 800 ms,
        p99 1 s), and a drill must page on the service, not on the machine. So it does what an operator does with a
        new service: p95 and p99 thresholds at twice the worst steady p95 and p99, never below the defaults; the
        spike is a stage slower than the p99 threshold by a fifth (3 s at least).
        """
        config = self.settings.monitor

        def worst(figure: str) -> float:
            return max((t.figures.get(figure, 0.0) for t in ticks), default=0.0)

        p99 = max(config.p99_ms_max, round(2 * worst("p99_ms"), -2))
        p95 = max(config.p95_ms_max, round(2 * worst("p95_ms"), -2))
        monitor = config.model_copy(update={"p99_ms_max": p99, "p95_ms_max": p95})
        self.settings = self.settings.model_copy(update={"monitor": monitor})
        logger.info("latency thresholds: p95 %.0f ms, p99 %.0f ms", p95, p99)
        return max(LATENCY_SPIKE_S, 1.2 * p99 / 1000)

    def close(self) -> None:
        self.store.close()


def drill_vectors(max_batch: int) -> Any:
    """The service's :class:`BatchedVectors` with a fault switch on the index: while ``fail_share`` > 0 that share
    of searches raises :class:`RetrievalError` (the index did not answer; the service answers 503 and records it),
    as a Qdrant outage would. Passed to ``create_app`` by code only; no setting reaches it."""
    from rag.errors import RetrievalError
    from rag.service.batcher import BatchedVectors

    class DrillVectors(BatchedVectors):
        fail_share = 0.0

        async def search(self, engine: Any, text: str, vector: Any, **kwargs: Any) -> Any:
            if self.fail_share and random.random() < self.fail_share:
                raise RetrievalError("fault drill: the index did not answer")
            return await super().search(engine, text, vector, **kwargs)

    return DrillVectors(max_batch=max_batch)


def _drill_guardrails() -> dict[str, Any]:
    """The default guardrails without the two output checks that embed or parse every answer (grounding, output PII:
    100-300 ms of CPU per answer). On two shared cores they would make the drill measure the machine's load, not
    the service's faults; the input checks, which the guardrail surge exercises, stay as they are."""
    from rag.guardrails.config import GuardrailsConfig

    guardrails = GuardrailsConfig().model_dump()
    guardrails["grounding"]["enabled"] = False
    guardrails["output_pii"]["enabled"] = False
    return guardrails


def _build_service(home: Path) -> tuple[Any, Any]:
    """Settings over ``home`` with the demo corpus ingested, and a generative stack's config (LLM prices set)."""
    from flows.settings import Settings
    from pipelines.demo import build_demo_corpus
    from pipelines.env import apply_offline_env
    from pipelines.index import VectorIndex
    from pipelines.ingest import run_ingest

    settings = Settings(home=home)
    apply_offline_env(settings)
    settings.ensure_dirs()
    corpus = home / "demo-corpus"
    build_demo_corpus(corpus, overwrite=True)
    started = time.perf_counter()
    run_ingest(settings, corpus)
    logger.info("demo corpus ingested in %.1f s", time.perf_counter() - started)
    index = VectorIndex(settings).current()
    if index is None:
        raise RuntimeError("the demo corpus ingest published no index")
    return settings, index


def measure_faults(args: argparse.Namespace, folder: Path) -> dict[str, object]:
    """Replay demo_qa traffic into a live service on loopback (uvicorn, real index, an OpenAI-compatible LLM on
    loopback), inject each fault in turn and time the monitor's alert; count the alerts of windows without a fault.
    """
    from rag.service.app import create_app
    from rag.service.holder import StackHolder
    from rag.types import StackConfig
    from tests.fixtures.fake_openai import FakeOpenAI
    from tests.fixtures.server import serve

    interval = float(args.interval)
    # The drift test embeds the window's questions and the reference at every tick; 150 reference questions keep a
    # tick's embedding work small beside the replay on two cores (the test's power is ample at this size).
    os.environ.setdefault("RAGOPS_MONITOR__DRIFT_REFERENCE_SIZE", "150")
    settings, index = _build_service(folder / "home")
    normal, adversarial = _demo_questions()
    off_domain = _off_domain(args.off_domain)
    traffic = Traffic(questions=normal, adversarial=adversarial)
    short, long = _GroundedReply(words=0), _GroundedReply(words=1500)
    llm_delay = {"spike": LATENCY_SPIKE_S}

    with FakeOpenAI(reply=short) as llm:
        config = StackConfig.for_index(
            index,
            name="bench-monitor",
            answerer={"kind": "llm"},
            guardrails=_drill_guardrails(),
            # list prices of a mid-size hosted model ($3 / $15 per million tokens); the fake counts words as tokens
            llm={"base_url": llm.base_url, "model": llm.model, "input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0},
        )
        holder = StackHolder(settings, champion=lambda: (1, config))
        vectors = drill_vectors(settings.service.max_batch)

        def set_attr(obj: object, name: str, value: object) -> Callable[[], None]:
            return lambda: setattr(obj, name, value)

        faults = [
            Fault(
                "latency_spike",
                "latency_p99_ms",
                lambda: setattr(llm, "delay_s", llm_delay["spike"]),
                set_attr(llm, "delay_s", 0.0),
            ),
            Fault(
                "error_burst", "error_rate", set_attr(vectors, "fail_share", 0.3), set_attr(vectors, "fail_share", 0.0)
            ),
            Fault("cost_jump", "cost_per_request_usd", set_attr(llm, "reply", long), set_attr(llm, "reply", short)),
            Fault(
                "guardrail_surge",
                "guardrail_trigger_rate",
                set_attr(traffic, "adversarial_share", 0.7),
                set_attr(traffic, "adversarial_share", 0.0),
            ),
            Fault(
                "thumbs_down_surge",
                "thumbs_down_share",
                set_attr(traffic, "down_share", 0.7),
                set_attr(traffic, "down_share", 0.05),
            ),
            Fault(
                "query_drift",
                "query_drift",
                set_attr(traffic, "questions", off_domain),
                set_attr(traffic, "questions", normal),
            ),
        ]
        stop = threading.Event()
        with serve(create_app(settings, holder=holder, vectors=vectors)) as running:
            import httpx

            with httpx.Client(base_url=running.url, headers=running.headers, timeout=120) as client:
                while client.get("/readyz").status_code != 200:
                    time.sleep(0.2)
                for question in normal[:20]:  # first requests load lazily built parts: not the steady state
                    client.post("/v1/query", json={"question": question})
            threads = [
                threading.Thread(
                    target=_replay,
                    args=(running.url, running.headers, traffic, args.rps / args.clients, stop, n),
                    daemon=True,
                )
                for n in range(args.clients)
            ]
            for thread in threads:
                thread.start()
            monitor = Monitor(settings, interval)
            spans: list[tuple[float, float]] = []  # (fault on, fault off) wall times
            results: dict[str, dict[str, object]] = {}
            try:
                monitor.next_at = time.time() + interval  # the first window holds a full interval of traffic
                monitor.run_until(time.time() + interval * (CALIBRATION_WINDOWS + 0.25))
                calibration = list(monitor.ticks)
                llm_delay["spike"] = monitor.calibrate_latency(calibration)
                monitor.run_until(time.time() + interval * args.steady_intervals)  # steady windows: no alert due
                for fault in faults:
                    mid = monitor.next_at - interval / 2  # faults begin mid-interval: the first window is half faulty
                    monitor.run_until(mid if mid > time.time() else mid + interval)
                    fault.start()
                    began = time.time()
                    before = len(monitor.ticks)
                    tick = monitor.run_until(began + 2 * interval, until_rule=fault.rule)
                    fault.stop()
                    spans.append((began, time.time()))
                    results[fault.name] = {
                        "alerted": tick is not None,
                        "seconds_to_alert": round(tick.at - began, 2) if tick is not None else None,
                        "monitor_runs_to_alert": len(monitor.ticks) - before if tick is not None else None,
                        "rules": list(tick.breaches) if tick is not None else [],
                        "value": _rule_figure(tick, fault.rule),
                    }
                    logger.info("fault %s: %s", fault.name, results[fault.name])
                    monitor.run_until(time.time() + interval)  # the next window starts after the fault
                monitor.run_until(time.time() + interval * 2.5)  # a whole interval after the last fault, and more
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=30)
                monitor.close()
            requests = running.app.state.requests
            requests.flush()
            served = requests.count()

    # A window is clean when it ends before the first fault or starts a whole interval after one ended (requests in
    # flight at the switch have finished): an alert there is a false one.
    clean = [
        t
        for t in monitor.ticks[len(calibration) :]
        if not any(t.since < off + interval and t.until > on for on, off in spans)
    ]
    false_rules = [rule for t in clean for rule in t.breaches]
    # caught by the first monitor run whose window holds the fault (it began half an interval before that run)
    within = [r["monitor_runs_to_alert"] == 1 for r in results.values()]
    return {
        "interval_s": interval,
        "faults": results,
        "false_alerts": len(false_rules),
        "false_alert_rules": sorted(set(false_rules)),
        "clean_windows": len(clean),
        "monitor_runs": len(monitor.ticks),
        "calibration_windows": len(calibration),
        "calibration_p99_ms": [t.figures.get("p99_ms") for t in calibration],
        "latency_thresholds_ms": {
            "p95": monitor.settings.monitor.p95_ms_max,
            "p99": monitor.settings.monitor.p99_ms_max,
        },
        "latency_spike_s": llm_delay["spike"],
        "monitor_run_s_p50": round(statistics.median(t.seconds for t in monitor.ticks), 2),
        "replay_rps": args.rps,
        "requests_served": served,
        "steady_window_figures": clean[0].figures if clean else {},
        "all_alerted_within_interval": all(within),
    }


def _rule_figure(tick: Tick | None, rule: str) -> float | None:
    """The window's figure a rule reads (the drift rule reads the p-value)."""
    if tick is None:
        return None
    name = {
        "latency_p99_ms": "p99_ms",
        "error_rate": "error_rate",
        "cost_per_request_usd": "cost_per_request_usd",
        "guardrail_trigger_rate": "guardrail_trigger_rate",
        "thumbs_down_share": "thumbs_down_share",
        "query_drift": "drift_p_value",
    }[rule]
    value = tick.figures.get(name)
    return round(value, 6) if value is not None else None


def main() -> None:
    """Run the measurements and print the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Shorter: 15 s interval, 5,000 requests, 200,000 records.")
    parser.add_argument("--records", type=int, help="Records in the store for the window query (default 1,000,000).")
    parser.add_argument("--requests", type=int, help="Requests recorded for the overhead figure (default 20,000).")
    parser.add_argument("--db", type=Path, help="SQLite file to fill (kept); default a temporary one.")
    parser.add_argument("--interval", type=float, help="Monitor interval and window of the fault drill (default 30 s).")
    parser.add_argument("--rps", type=float, default=2.5, help="Replayed requests per second.")
    parser.add_argument("--clients", type=int, default=16, help="Replay threads (at most this many requests at once).")
    parser.add_argument(
        "--steady-intervals", type=int, help="Steady windows after calibration, before the faults (default 6)."
    )
    parser.add_argument("--off-domain", type=Path, default=DEFAULT_OFF_DOMAIN, help="JSONL of off-domain questions.")
    parser.add_argument("--skip-faults", action="store_true", help="Only the overhead and window-query figures.")
    args = parser.parse_args()
    args.records = args.records or (200_000 if args.quick else 1_000_000)
    args.requests = args.requests or (5_000 if args.quick else 20_000)
    args.interval = args.interval or (15.0 if args.quick else 30.0)
    args.steady_intervals = args.steady_intervals or (4 if args.quick else 8)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logger.setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="ragops-bench-monitor-") as tmp:
        folder = Path(tmp)
        from bench._common import cpu_flags, cpu_model

        result: dict[str, object] = {
            "cpu_model": cpu_model(),
            "cpu_flags": cpu_flags(),
            "cpus": os.cpu_count(),
            "quick": args.quick,
        }
        if not args.skip_faults:
            result.update(measure_faults(args, folder))
        result.update(measure_overhead(args.requests, folder))
        result["metrics_multiprocess_p50_ms"] = measure_multiprocess_metrics(args.requests, folder)
        result["record_overhead_multiprocess_p50_ms"] = round(
            float(result["metrics_multiprocess_p50_ms"]) + float(result["store_enqueue_p50_ms"]),  # type: ignore[arg-type]
            4,
        )
        db = args.db or folder / "window.db"
        result.update(measure_window(f"sqlite:///{db.resolve()}", args.records))
        targets = {
            "record_overhead_p50_ms<=0.3": float(result["record_overhead_p50_ms"]) <= 0.3,  # type: ignore[arg-type]
            "record_overhead_multiprocess_p50_ms<=0.3": float(result["record_overhead_multiprocess_p50_ms"]) <= 0.3,  # type: ignore[arg-type]
            "window_query_s_1m_records<1": float(result["window_query_s_1m_records"]) < 1.0,  # type: ignore[arg-type]
        }
        if not args.skip_faults:
            targets["every_fault_alerted_within_interval"] = bool(result["all_alerted_within_interval"])
            targets["false_alerts==0"] = result["false_alerts"] == 0
        result["targets_met"] = targets
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
