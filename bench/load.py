"""Serving under load, faults, and distributed partitioning on Dask (issue 16's figures).

Usage: ``python bench/load.py [--part serve|faults|dask|all] [--workers N] [--step-seconds S] [--soak-seconds S]
[--fault-seconds S] [--only-faults NAME ...] [--files N] [--pages-per-file P] [--out FILE]``. Prints one JSON object.

Serve (``--part serve``): the demo corpus ingested and a dense extractive stack promoted; ``ragops serve --workers 2``
(the defaults otherwise: admission control, no cache) driven over loopback by :mod:`bench._loadgen` (aiohttp):

1. ``capacity_rps``: the goodput of a closed loop holding twice the admission slots busy (a refused client pauses
   20 ms);
2. open-loop steps at 0.5x, 1x, 1.5x and 2x that capacity for ``--step-seconds`` each (requests leave on schedule
   whatever the answers take; latency counts from the scheduled departure): ``goodput_share_at_2x`` (answered per
   second at 2x over capacity; target >= 0.9), ``p99_ratio_2x_to_half`` (p99 of answered requests at 2x over 0.5x;
   target <= 2), ``refused_without_retry_after`` and ``other_errors`` (targets 0); each step's
   ``generator_cpu_share`` (the load generator shares the cores);
3. the soak: 0.7x capacity for ``--soak-seconds``, the service's memory (all its processes) sampled every 5 s:
   ``soak_memory_growth`` = mean of the last tenth over the mean of the second minute, minus 1 (target < 0.05).

Faults (``--part faults``, :mod:`bench._faults`): kill -9 of one of two API workers mid-stream, of an ingestion
mid-run, of the ``ragops up`` supervisor; MLflow killed, Redis stopped, PostgreSQL restarted, an LLM that never
answers; each under traffic, reported as ``faults: {name: {survived, lost, ...}}``.

Dask (``--part dask``):

1. Writes N PDFs of SciFact abstracts (``../shared/datasets/scifact``; the demo corpus's texts without it), about
   P pages each, with reportlab.
2. Partitions them through the ingest flow's own task (``flows.ingest.partition_files_task``, in the Dask path's
   batches of ``flows.ingest.DASK_BATCH`` files) on three task runners, in one Prefect flow each: Prefect's thread pool
   with 2 threads (what the flow does without Dask; the process warmed up first), and new local Dask clusters of 1
   and of 2 single-threaded worker processes (``RAGOPS_INGEST__DASK_WORKERS``: each run starts its cluster, whose
   workers then import unstructured, seconds each). ``*_seconds`` time the flow body (submit to last result);
   ``*_with_startup_seconds`` the whole call, the cluster's start and stop included. Then the same on long-lived
   clusters of 1 and 2 workers that have partitioned a file before (``RAGOPS_INGEST__DASK_ADDRESS``'s steady
   state): ``dask_partition_speedup_2_workers`` = warm 1 worker / warm 2 workers; ``..._cold`` the same for new
   clusters.
3. The end-to-end ingest curve: ``ragops``'s ingest flow over the same PDFs with ``RAGOPS_INGEST__DASK_WORKERS`` 1
   and 2 (``ingest_seconds_dask_1``/``_2``; embedding already uses both cores in either case).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import run_measured  # noqa: E402
from bench.query import reader_key  # noqa: E402  (the query benchmark's helpers)

SCIFACT = REPO.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl.gz"
logger = logging.getLogger("bench.load")

STEP_FACTORS = (0.5, 1.0, 1.5, 2.0)
"""Offered load of the steps, as multiples of the measured capacity."""
CAPACITY_OFFER = 2.5
"""The open-loop offer that saturates the service, as a multiple of the closed-loop estimate."""
SOAK_FACTOR = 0.7
SOAK_SAMPLE_S = 5.0


def measure_faults(temp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The fault scenarios of :mod:`bench._faults` over the demo stack (``faults``: name -> survived, lost, ...)."""
    from bench._common import demo_platform
    from bench._faults import FaultContext, run_faults
    from evaluation.testsets import load_testset

    home = temp / "faults" / "home"
    settings, _, _, _ = demo_platform(home, name="bench-faults", reload_interval_s=3600.0)
    context = FaultContext(
        settings=settings,
        home=home,
        headers={"Authorization": f"Bearer {reader_key(settings, 'bench-faults')}"},
        questions=[item.question for item in load_testset("demo_qa").items],
        serve=serve,
        hold_s=args.fault_seconds,
    )
    faults = run_faults(context, args.only_faults)
    return {"faults": faults, "faults_survived": sum(bool(f.get("survived")) for f in faults.values())}


def abstracts(limit: int) -> list[tuple[str, str]]:
    """(title, text) of the first ``limit`` SciFact abstracts, or the demo corpus's Markdown files repeated."""
    if SCIFACT.is_file():
        out = []
        with gzip.open(SCIFACT, "rt", encoding="utf-8") as lines:
            for line in lines:
                doc = json.loads(line)
                out.append((str(doc.get("title") or ""), str(doc.get("text") or "")))
                if len(out) >= limit:
                    break
        return out
    from pipelines.demo import DEMO_CORPUS_DIR

    texts = [(p.stem, p.read_text(encoding="utf-8")) for p in sorted(Path(DEMO_CORPUS_DIR).rglob("*.md"))]
    return [texts[i % len(texts)] for i in range(limit)]


def write_pdfs(folder: Path, files: int, pages: int) -> list[Path]:
    """``files`` PDFs of about ``pages`` pages each (three abstracts a page)."""
    from xml.sax.saxutils import escape

    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate

    styles = getSampleStyleSheet()
    per_file = 3 * pages
    texts = abstracts(files * per_file)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = folder / f"paper-{i:04d}.pdf"
        story = []
        for title, text in texts[i * per_file : (i + 1) * per_file]:
            story += [Paragraph(escape(title), styles["Heading2"]), Paragraph(escape(text), styles["BodyText"])]
        SimpleDocTemplate(str(path), pagesize=A4, invariant=1).build(story)
        paths.append(path)
    return paths


def warm_up(path: Path) -> None:
    """Partition one file, so the process has imported unstructured and its PDF stack (seconds, once)."""
    from pipelines.partition import partition_file

    partition_file(path, max_bytes=50 * 1024 * 1024)


def partition_once(runner: Any, batches: list[list[Any]], max_bytes: int) -> tuple[float, float, int]:
    """(body seconds, whole-call seconds, documents) of partitioning ``batches`` on ``runner``."""
    from prefect import flow

    from flows.ingest import partition_files_task

    @flow(name="bench-partition", validate_parameters=False)
    def timed(batches: list[list[Any]]) -> tuple[float, int]:
        started = time.perf_counter()
        futures = [partition_files_task.submit(batch, max_bytes, ["utf-8"]) for batch in batches]
        docs = sum(len(f.result()[0]) for f in futures)
        return time.perf_counter() - started, docs

    started = time.perf_counter()
    body, docs = timed.with_options(task_runner=runner)(batches)
    return body, time.perf_counter() - started, docs


def measure_dask(folder: Path, files: int, pages: int) -> dict[str, Any]:
    """Partitioning on threads and on 1 and 2 Dask workers, then the ingest flow with 1 and 2 workers."""
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.ingest import file_batches
    from pipelines.settings import IngestSettings
    from pipelines.sources import discover

    write_pdfs(folder / "pdfs", files, pages)
    batches = file_batches([list(discover(folder / "pdfs", settings=IngestSettings()).items)])
    max_bytes = 50 * 1024 * 1024

    def dask(n: int) -> Any:
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
        )

    out: dict[str, Any] = {"files": files, "pages_per_file": pages, "batches": len(batches)}
    sample = batches[0][0].path
    assert sample is not None
    warm_up(sample)  # the flow's own process, for the thread pool
    for name, runner in (("threads_2", ThreadPoolTaskRunner(max_workers=2)), ("dask_1", dask(1)), ("dask_2", dask(2))):
        logger.info("partitioning %d PDFs on %s (a new cluster: its workers import unstructured)", files, name)
        body, whole, docs = partition_once(runner, batches, max_bytes)
        out[f"partition_seconds_{name}"] = round(body, 2)
        out[f"partition_with_startup_seconds_{name}"] = round(whole, 2)
        out[f"documents_{name}"] = docs
    from distributed import Client, LocalCluster

    for n in (1, 2):  # a long-lived cluster (RAGOPS_INGEST__DASK_ADDRESS): workers warm from earlier runs
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            with Client(cluster) as client:
                client.run(warm_up, sample)
            logger.info("partitioning %d PDFs on a warm cluster of %d", files, n)
            body, _, docs = partition_once(DaskTaskRunner(address=cluster.scheduler_address), batches, max_bytes)
            out[f"partition_seconds_warm_dask_{n}"] = round(body, 2)
    out["dask_partition_speedup_2_workers"] = round(
        out["partition_seconds_warm_dask_1"] / out["partition_seconds_warm_dask_2"], 3
    )
    out["dask_partition_speedup_2_workers_cold"] = round(
        out["partition_seconds_dask_1"] / out["partition_seconds_dask_2"], 3
    )
    out["dask_partition_speedup_2_workers_with_startup"] = round(
        out["partition_with_startup_seconds_dask_1"] / out["partition_with_startup_seconds_dask_2"], 3
    )
    out["warm_dask_2_vs_threads_2"] = round(
        out["partition_seconds_threads_2"] / out["partition_seconds_warm_dask_2"], 3
    )

    from flows.ingest import ingest_flow

    for n in (1, 2):
        os.environ["RAGOPS_INGEST__DASK_WORKERS"] = str(n)
        os.environ["RAGOPS_HOME"] = str(folder / f"home-{n}")
        logger.info("ingest flow with %d Dask worker(s)", n)
        started = time.perf_counter()
        report = ingest_flow(source=str(folder / "pdfs"))
        out[f"ingest_seconds_dask_{n}"] = round(time.perf_counter() - started, 2)
        out[f"ingest_chunks_dask_{n}"] = report["chunks_upserted"]
    out["ingest_speedup_2_workers"] = round(out["ingest_seconds_dask_1"] / out["ingest_seconds_dask_2"], 3)
    return out


@dataclass(frozen=True)
class Service:
    """A ``ragops serve --workers N`` subprocess on loopback and where its log goes."""

    process: subprocess.Popen[bytes]
    url: str

    def tree_rss_bytes(self) -> int:
        """Resident memory of the service and its worker processes."""
        import psutil

        try:
            parent = psutil.Process(self.process.pid)
            procs = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextlib.contextmanager
def serve(settings: Any, home: Path, workers: int, extra_env: dict[str, str] | None = None) -> Iterator[Service]:
    """``ragops serve --workers N`` over ``home`` (extra ``RAGOPS_*`` in ``extra_env``), ready, stopped after."""
    from bench.query import free_port, wait_ready
    from pipelines.env import child_env

    port = free_port()
    env = child_env(settings, {"RAGOPS_HOME": str(home), **(extra_env or {})})
    log = (home.parent / f"serve-{port}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "serve", "--port", str(port), "--workers", str(workers)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    service = Service(process, f"http://127.0.0.1:{port}")
    try:
        wait_ready(service.url, process)
        yield service
    finally:
        service.stop()
        log.close()


def step_load(
    url: str, questions: Sequence[str], capacity: float, seconds: float, headers: dict[str, str]
) -> dict[str, Any]:
    """Open-loop steps from 0.5x to 2x ``capacity`` for ``seconds`` each, and the serving targets over them."""
    from bench._loadgen import open_loop

    steps: dict[str, Any] = {}
    results = {}
    for factor in STEP_FACTORS:
        logger.info("step %.1fx capacity: %.1f requests/s for %.0f s", factor, factor * capacity, seconds)
        result = asyncio.run(open_loop(url, questions, factor * capacity, seconds, headers=headers))
        results[factor] = result
        steps[f"{factor:.1f}x"] = result.summary()
        logger.info("step %.1fx: %s", factor, steps[f"{factor:.1f}x"])
    top, low = results[max(STEP_FACTORS)], results[min(STEP_FACTORS)]
    top_p99, low_p99 = top.summary()["p99_ms"], low.summary()["p99_ms"]
    return {
        "steps": steps,
        "goodput_share_at_2x": round(len(top.ok) / top.seconds / capacity, 3),
        "p99_ratio_2x_to_half": (
            round(float(top_p99) / float(low_p99), 2)
            if isinstance(top_p99, float) and isinstance(low_p99, float)
            else None
        ),
        "refused_without_retry_after": sum(r.refused_without_retry_after for r in results.values()),
        "other_errors": sum(r.other_errors for r in results.values()),
    }


def soak(
    service: Service, questions: Sequence[str], rate: float, seconds: float, headers: dict[str, str]
) -> dict[str, Any]:
    """``rate`` requests/s for ``seconds`` while the service's memory is sampled: growth from the first minute
    (after a warm minute) to the last tenth of the run."""
    import threading

    from bench._loadgen import open_loop

    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not done.wait(SOAK_SAMPLE_S):
            samples.append((time.monotonic() - start, service.tree_rss_bytes()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    logger.info("soak: %.1f requests/s for %.0f s", rate, seconds)
    result = asyncio.run(open_loop(service.url + "/v1/query", questions, rate, seconds, headers=headers))
    done.set()
    sampler.join()
    warm = [rss for t, rss in samples if 60 <= t < 120] or [rss for _, rss in samples[: max(1, len(samples) // 5)]]
    tail = [rss for t, rss in samples if t >= 0.9 * seconds] or [
        rss for _, rss in samples[-max(1, len(samples) // 10) :]
    ]
    base, last = sum(warm) / len(warm), sum(tail) / len(tail)
    return {
        "soak": {
            **result.summary(),
            "rss_mb_first_minute": round(base / 2**20, 1),
            "rss_mb_last_tenth": round(last / 2**20, 1),
            "rss_mb_max": round(max(rss for _, rss in samples) / 2**20, 1),
        },
        "soak_memory_growth": round(last / base - 1, 4),
    }


def measure_serving(temp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Capacity, the step load and the soak against ``ragops serve --workers N`` over the demo stack."""
    from bench._common import demo_platform
    from bench._loadgen import closed_loop, open_loop
    from evaluation.testsets import load_testset

    home = temp / "serve" / "home"
    settings, _, _, version = demo_platform(home, name="bench-load", reload_interval_s=3600.0)
    questions = [item.question for item in load_testset("demo_qa").items]
    auth = {"Authorization": f"Bearer {reader_key(settings, 'bench-load')}"}
    out: dict[str, Any] = {"workers": args.workers, "stack_version": version, "questions": len(questions)}
    extra = dict(item.split("=", 1) for item in args.env)
    out["service_env"] = extra
    with serve(settings, home, args.workers, extra) as service:
        url = service.url + "/v1/query"
        asyncio.run(
            closed_loop(url, questions, 4, 10.0, headers=auth)
        )  # warm-up: both workers, their embedders and indexes
        # A closed loop holding twice the admission slots busy gives a first estimate; the capacity is then the
        # goodput under an open-loop offer well past it (admission control sheds the excess), for a closed loop
        # leaves slots idle between a client's answer and its next question.
        limits = settings.limits
        slots = int(extra.get("RAGOPS_LIMITS__MAX_CONCURRENCY", limits.max_concurrency or limits.cpu_concurrency))
        clients = 2 * args.workers * slots
        logger.info("capacity estimate: closed loop, %d clients, %.0f s", clients, args.capacity_seconds / 2)
        estimate = asyncio.run(closed_loop(url, questions, clients, args.capacity_seconds / 2, headers=auth))
        offer = CAPACITY_OFFER * estimate.offered_rps
        logger.info("capacity: open loop at %.1f requests/s for %.0f s", offer, args.capacity_seconds)
        saturated = asyncio.run(open_loop(url, questions, offer, args.capacity_seconds, headers=auth))
        capacity = max(estimate.offered_rps, len(saturated.ok) / saturated.seconds)
        out["capacity_rps"] = round(capacity, 2)
        out["capacity"] = {"closed_loop": estimate.summary(), "saturated": saturated.summary()}
        logger.info("capacity %.1f requests/s: %s", capacity, out["capacity"])
        if args.step_seconds > 0:
            out.update(step_load(url, questions, capacity, args.step_seconds, auth))
        if args.soak_seconds > 0:
            out.update(soak(service, questions, SOAK_FACTOR * capacity, args.soak_seconds, auth))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--part", choices=("serve", "faults", "dask", "all"), default="all", help="What to measure (default: all)."
    )
    parser.add_argument("--workers", type=int, default=2, help="API worker processes of the served stack.")
    parser.add_argument(
        "--env", nargs="*", default=[], metavar="RAGOPS_X=V", help="Settings of the served service (e.g. limits)."
    )
    parser.add_argument("--capacity-seconds", type=float, default=20.0, help="Closed-loop capacity measurement.")
    parser.add_argument("--step-seconds", type=float, default=60.0, help="Each load step (0 skips the steps).")
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="The soak at 0.7x capacity (0 skips it).")
    parser.add_argument("--fault-seconds", type=float, default=8.0, help="Traffic before, during and after a fault.")
    parser.add_argument("--only-faults", nargs="*", default=None, help="Run only these fault scenarios.")
    parser.add_argument("--files", type=int, default=64, help="PDFs to partition.")
    parser.add_argument("--pages-per-file", type=int, default=4, help="About this many pages per PDF.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    for key in [k for k in os.environ if k.startswith("RAGOPS_")]:
        del os.environ[key]  # measure the defaults

    def measure(temp: Path) -> dict[str, Any]:
        os.environ["PREFECT_HOME"] = str(temp / "prefect")  # a throwaway ephemeral Prefect, not the user's
        out: dict[str, Any] = {}
        if args.part in ("serve", "all"):
            out.update(measure_serving(temp, args))
        if args.part in ("faults", "all"):
            out.update(measure_faults(temp, args))
        if args.part in ("dask", "all"):
            out.update(measure_dask(temp, args.files, args.pages_per_file))
        return out

    return run_measured("ragops-bench-load-", measure, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
