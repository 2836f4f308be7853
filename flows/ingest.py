"""The Prefect flow ``ingest``: the steps of ``pipelines.ingest`` as tasks, with retries and a run summary.

Tasks are thin: each calls one step function, and ``pipelines.ingest.run_ingest`` sequences them through a
:class:`~pipelines.ingest.StepRunner` made of these tasks, so the flow and the in-process CLI run cannot drift.
Steps that touch files or the index can fail transiently (a file being rewritten, a Qdrant server restarting) and
are retried; chunking and embedding are pure and are not. Partitioning is mapped over batches of files on a thread
pool (file I/O and pdfminer overlap), or, with ``RAGOPS_INGEST__DASK_WORKERS`` or ``RAGOPS_INGEST__DASK_ADDRESS``,
on Dask through prefect-dask: a subflow ``ingest-partition`` whose task runner is a ``DaskTaskRunner`` (a local
cluster of single-threaded worker processes, or a running scheduler), since partitioning is single-threaded Python
per document and only processes run it in parallel. Only the files travel (paths, ids, hashes); every other step,
embedding included (it already uses every core), stays in the flow's process. Task inputs hold models and
clients, so Prefect's result caching is off (``NO_CACHE``): idempotency comes from content hashes instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.settings import Settings
from pipelines import ingest as steps
from pipelines.env import apply_offline_env
from pipelines.ingest import IngestContext, IngestReport, ReadResult, StepRunner
from pipelines.settings import PipelineSettings
from pipelines.tracking import log_ingest_report
from pipelines.types import SourceItem
from rag.embedders import ingest_target

_RETRY: dict[str, Any] = {"retries": 2, "retry_delay_seconds": [1, 5], "cache_policy": NO_CACHE}

discover_task = task(name="discover", **_RETRY)(steps.discover_step)
plan_task = task(name="plan", **_RETRY)(steps.plan_step)
partition_task = task(name="partition", **_RETRY)(steps.read_step)
chunk_task = task(name="chunk", cache_policy=NO_CACHE)(steps.chunk_step)
validate_task = task(name="validate", cache_policy=NO_CACHE)(steps.validate_step)
embed_task = task(name="embed", cache_policy=NO_CACHE)(steps.embed_step)
upsert_task = task(name="upsert", **_RETRY)(steps.upsert_step)
delete_stale_task = task(name="delete-stale", **_RETRY)(steps.delete_stale_step)
publish_task = task(name="publish", cache_policy=NO_CACHE)(steps.publish_step)


@task(name="partition-files", **_RETRY)
def partition_files_task(items: list[SourceItem], max_bytes: int, encodings: list[str]) -> ReadResult:
    """Partition files in whichever process the task runner chose (plain values in and out)."""
    return steps.read_items(items, max_bytes=max_bytes, encodings=encodings)


@flow(name="ingest-partition", validate_parameters=False)
def partition_flow(batches: list[list[SourceItem]], max_bytes: int, encodings: list[str]) -> list[ReadResult]:
    """Partition batches of files on the task runner it is given (Dask: see :func:`dask_runner`)."""
    futures = [partition_files_task.submit(batch, max_bytes, encodings) for batch in batches]
    return [future.result() for future in futures]


DASK_BATCH = 4
"""Files per Dask task: small, so two workers finish together (a PDF takes from milliseconds to seconds)."""


def file_batches(batches: Sequence[Sequence[SourceItem]], size: int = DASK_BATCH) -> list[list[SourceItem]]:
    """The files of ``batches`` regrouped ``size`` at a time (records are read in the flow's process)."""
    files = [item for batch in batches for item in batch if item.kind == "file"]
    return [files[i : i + size] for i in range(0, len(files), size)]


def dask_runner(settings: PipelineSettings) -> Any | None:
    """The Dask task runner the settings ask for, or None (partition on the flow's threads)."""
    ingest = settings.ingest
    if ingest.dask_address is None and ingest.dask_workers == 0:
        return None
    from prefect_dask import DaskTaskRunner

    if ingest.dask_address is not None:
        return DaskTaskRunner(address=ingest.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": ingest.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,  # no port for a web page nobody opens
        }
    )


def _partition_mapped(ctx: IngestContext, batches: Sequence[Sequence[SourceItem]]) -> list[ReadResult]:
    """Partition batches concurrently: on the flow's thread pool, or on Dask when configured."""
    runner = dask_runner(ctx.settings)
    if runner is None:
        futures = [partition_task.submit(ctx, list(batch)) for batch in batches]
        return [future.result() for future in futures]
    files = file_batches(batches)
    records = [item for batch in batches for item in batch if item.kind != "file"]
    results: list[ReadResult] = [steps.read_step(ctx, records)] if records else []
    if files:
        with ctx.timed("partition"):
            results += partition_flow.with_options(task_runner=runner)(
                files, ctx.settings.ingest.max_file_bytes, list(ctx.settings.ingest.text_encodings)
            )
        ctx.progress.advance("partition", sum(len(batch) for batch in files))
    return results


TASKS = StepRunner(
    discover=discover_task,
    plan=plan_task,
    read_batches=_partition_mapped,
    chunk=chunk_task,
    validate=validate_task,
    embed=embed_task,
    upsert=upsert_task,
    delete_stale=delete_stale_task,
    publish=publish_task,
)


@task(name="report", **_RETRY)
def report_task(settings: Settings, report: IngestReport) -> str:
    """Log the run to MLflow and publish a markdown summary as a Prefect artifact."""
    mlflow_run = log_ingest_report(settings, report, params=run_params(settings))
    create_markdown_artifact(key="ingest-summary", markdown=summary_markdown(report, mlflow_run), description="ingest")
    return mlflow_run


def run_params(settings: Settings) -> dict[str, str]:
    """Parameters recorded with every ingestion run in MLflow."""
    return {
        "chunk_size": str(settings.chunking.chunk_size),
        "chunk_overlap": str(settings.chunking.chunk_overlap),
        "embedder": settings.embedder.model_name,
        "backend": settings.embedder.backend,
        "max_failure_share": str(settings.ingest.max_failure_share),
    }


def summary_markdown(report: IngestReport, mlflow_run: str) -> str:
    """A human summary of the run for the Prefect UI."""
    rows = [
        ("documents seen", report.documents_seen),
        (
            "new / changed / unchanged / deleted",
            f"{report.documents_new} / {report.documents_changed} / {report.documents_unchanged} / "
            f"{report.documents_deleted}",
        ),
        ("failed (quarantined)", report.documents_failed),
        (
            "chunks upserted / deleted / truncated",
            f"{report.chunks_upserted} / {report.chunks_deleted} / {report.chunks_truncated}",
        ),
        ("embeddings computed / reused", f"{report.embeddings_computed} / {report.embeddings_reused}"),
        ("points in index", report.points_total),
        ("index version", report.index_version),
        ("seconds", f"{report.seconds:.1f}"),
        ("MLflow run", mlflow_run),
    ]
    lines = [f"# Ingest of `{report.source}` into `{report.collection}`", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    if report.quarantined:
        lines += ["", "## Quarantined", "", "| document | stage | reason |", "|---|---|---|"]
        lines += [f"| {q.doc_id} | {q.stage} | {q.reason} |" for q in report.quarantined]
    return "\n".join(lines)


@flow(name="ingest", task_runner=ThreadPoolTaskRunner(max_workers=2))  # type: ignore[arg-type]
def ingest_flow(source: str, collection: str | None = None, tenant: str | None = None) -> dict[str, Any]:
    """Ingest a folder or JSONL corpus into the vector index: incremental, validated, published atomically.

    Args:
        source: Folder, JSONL/JSONL.gz file, or BEIR folder to ingest.
        collection: Target collection (default: RAGOPS_QDRANT__COLLECTION, or the shadow collection of a
            fine-tuned champion derived from it, so retraining never leaves the served index behind).
        tenant: Tenant recorded on every document (sidecar files can override it per folder or document).
    """
    settings = Settings()
    apply_offline_env(settings)
    settings.ensure_dirs()
    settings, collection = ingest_target(settings, collection)
    report = steps.run_ingest(settings, Path(source), collection=collection, tenant=tenant, runner=TASKS)
    mlflow_run = report_task(settings, report)
    get_run_logger().info(
        "ingested %s: %d new, %d changed, %d deleted, %d failed, %d points (MLflow run %s)",
        source,
        report.documents_new,
        report.documents_changed,
        report.documents_deleted,
        report.documents_failed,
        report.points_total,
        mlflow_run,
    )
    return report.to_json()
