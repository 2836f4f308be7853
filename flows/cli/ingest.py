"""`ragops ingest`, `demo`, `quarantine` and `index status`: getting documents in and seeing what landed."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.common import (
    JsonOpt,
    RichProgress,
    VerboseOpt,
    app,
    build_settings,
    guarded,
)
from flows.settings import Settings
from pipelines.errors import FailureThresholdExceeded, RagopsError

index_app = typer.Typer(help="Inspect the versioned vector index.", no_args_is_help=True)
app.add_typer(index_app, name="index")


def _print_report(data: dict[str, Any]) -> None:
    keys = [
        "documents_seen",
        "documents_new",
        "documents_changed",
        "documents_unchanged",
        "documents_deleted",
        "documents_failed",
        "chunks_upserted",
        "chunks_deleted",
        "chunks_truncated",
        "embeddings_computed",
        "embeddings_reused",
        "points_total",
        "index_version",
        "seconds",
    ]
    typer.echo(f"ingested {data['source']} into collection {data['collection']!r}")
    for key in keys:
        typer.echo(f"  {key.replace('_', ' '):<22} {data.get(key)}")
    for record in data.get("quarantined", []):
        typer.echo(f"  quarantined: {record['doc_id']} ({record['stage']}): {record['reason']}")
    if data.get("mlflow_run_id"):
        typer.echo(f"  MLflow run             {data['mlflow_run_id']} (experiment 'ingestion')")


def ingest_source(
    settings: Settings,
    source: Path,
    *,
    collection: str | None,
    tenant: str | None,
    show_progress: bool,
    use_prefect: bool | None = None,
) -> dict[str, Any]:
    """Run an ingestion through the Prefect flow when a Prefect API is configured, else in this process."""
    use_prefect = bool(settings.prefect.api_url) if use_prefect is None else use_prefect
    if use_prefect:
        if not settings.prefect.api_url:
            raise RagopsError("--prefect needs RAGOPS_PREFECT__API_URL pointing at a running Prefect server")
        from flows.ingest import ingest_flow

        return dict(ingest_flow(source=str(source), collection=collection, tenant=tenant))
    from flows.ingest import run_params
    from pipelines.ingest import run_ingest
    from pipelines.tracking import log_ingest_report
    from rag.embedders import ingest_target

    settings, collection = ingest_target(settings, collection)
    progress = RichProgress() if show_progress else None
    with progress.shown() if progress else nullcontext():
        report = run_ingest(settings, source, collection=collection, tenant=tenant, progress=progress)
    data = report.to_json()
    data["mlflow_run_id"] = log_ingest_report(settings, report, params=run_params(settings))
    data["orchestrated_by"] = "in-process"
    return data


@app.command()
def ingest(
    source: Annotated[
        Path, typer.Argument(help="Folder of .txt/.md/.html/.pdf/.docx, a .jsonl[.gz], or a BEIR folder.")
    ],
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="Target collection (default RAGOPS_QDRANT__COLLECTION).")
    ] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Tenant recorded on every document.")] = None,
    prefect: Annotated[
        bool | None,
        typer.Option(
            "--prefect/--no-prefect",
            help="Run as a Prefect flow (default: when RAGOPS_PREFECT__API_URL is set) or in this process.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Ingest SOURCE: partition, chunk, validate, embed and publish a new index version.

    Incremental: unchanged documents are skipped, changed ones replaced, deleted ones removed. Bad files are
    quarantined with their reason (see `ragops quarantine`); the run fails (exit 3) only when the failed share
    exceeds RAGOPS_INGEST__MAX_FAILURE_SHARE. Each run is logged to MLflow (experiment 'ingestion').
    """
    settings = build_settings(verbose)

    def body() -> dict[str, Any]:
        try:
            return ingest_source(
                settings, source, collection=collection, tenant=tenant, show_progress=not as_json, use_prefect=prefect
            )
        except FailureThresholdExceeded as exc:
            if as_json and exc.report is not None:  # the summary still goes to stdout; the exit code says it failed
                typer.echo(json.dumps(exc.report.to_json()))
            raise

    data = guarded(body)
    if as_json:
        typer.echo(json.dumps(data))
    else:
        _print_report(data)


@app.command()
def demo(
    target: Annotated[Path, typer.Argument(help="Folder to write the demo corpus into.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files that differ.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the bundled demo corpus (33 documents in md, html, txt, pdf and docx) into TARGET."""
    from pipelines.demo import build_demo_corpus

    paths = guarded(lambda: build_demo_corpus(target, overwrite=overwrite))
    if as_json:
        typer.echo(json.dumps({"target": str(target), "files": [str(p) for p in paths]}))
    else:
        typer.echo(f"wrote {len(paths)} documents to {target}")


@app.command()
def quarantine(
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="Collection.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List documents that did not land, with the reason and the pipeline stage that rejected them."""
    from dataclasses import asdict

    from pipelines.quarantine import Quarantine

    settings = build_settings()
    records = Quarantine(settings.quarantine_dir, collection or settings.qdrant.collection).list()
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in records]))
        return
    if not records:
        typer.echo("quarantine is empty")
    for record in records:
        typer.echo(f"{record.source}\n    {record.stage}: {record.reason}")


@index_app.command("status")
def index_status(
    collection: Annotated[str | None, typer.Option("--collection", "-c", help="Collection.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the published index version: points, documents, embedder identity, chunking, kept versions."""
    from pipelines.index import VectorIndex

    settings = build_settings()
    index = VectorIndex(settings, collection=collection)

    def body() -> dict[str, Any]:
        current = index.current()
        return {
            "collection": index.collection,
            "mode": "server" if index.server_mode else "embedded",
            "current": current.to_json() if current else None,
            "versions": index.versions(),
        }

    data = guarded(body)
    if as_json:
        typer.echo(json.dumps(data))
        return
    current = data["current"]
    if current is None:
        typer.echo(f"collection {data['collection']!r} has no published version yet (run `ragops ingest`)")
        return
    typer.echo(
        f"collection {data['collection']!r} ({data['mode']}): version {current['version']}, "
        f"{current['points']} points from {current['documents']} documents"
    )
    typer.echo(f"  embedder  {current['embedder']['name']} (weights {current['embedder']['weights_sha256'][:12]})")
    typer.echo(f"  chunking  {current['chunking']['chunk_size']}/{current['chunking']['chunk_overlap']} word pieces")
    typer.echo(f"  published {current['created_at']}; versions kept: {data['versions']}")
