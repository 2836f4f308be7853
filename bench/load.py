"""Scaling benchmark: distributed partitioning on Dask (issue 16's ``dask_partition_speedup_2_workers``).

Usage: ``python bench/load.py [--files N] [--pages-per-file P] [--out FILE]``. Prints one JSON object.

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

Not measured by this script yet: the step load, faults and soak of the serving targets (``capacity_rps``,
``goodput_share_at_2x``, ...); their keys are absent rather than invented.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import run_measured  # noqa: E402

SCIFACT = REPO.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl.gz"
logger = logging.getLogger("bench.load")


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=64, help="PDFs to partition.")
    parser.add_argument("--pages-per-file", type=int, default=4, help="About this many pages per PDF.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    for key in [k for k in os.environ if k.startswith("RAGOPS_")]:
        del os.environ[key]  # measure the defaults

    def measure(temp: Path) -> dict[str, Any]:
        os.environ["PREFECT_HOME"] = str(temp / "prefect")  # a throwaway ephemeral Prefect, not the user's
        return measure_dask(temp, args.files, args.pages_per_file)

    return run_measured("ragops-bench-load-", measure, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
