"""`ragops capacity`: replicas, cores and memory for a query rate and a corpus size (evaluation/capacity.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import JsonOpt, app, fail


@app.command("capacity")
def capacity(
    qps: Annotated[float, typer.Option("--qps", help="Query requests per second to serve.")],
    corpus_chunks: Annotated[int, typer.Option("--corpus-chunks", help="Chunks in the index (ragops index status).")],
    utilisation: Annotated[
        float, typer.Option("--utilisation", help="Target CPU utilisation (headroom for bursts and a lost replica).")
    ] = 0.6,
    cores_per_replica: Annotated[int, typer.Option("--cores-per-replica", help="Cores of one service replica.")] = 2,
    replication: Annotated[int, typer.Option("--replication", help="Copies of the Qdrant collection.")] = 2,
    payload_in_ram: Annotated[
        bool, typer.Option("--payload-in-ram", help="Keep Qdrant payloads in memory (default: on disk).")
    ] = False,
    reindex_hours: Annotated[
        float, typer.Option("--reindex-hours", help="Window in which ingestion must re-embed the whole corpus.")
    ] = 4.0,
    profile: Annotated[
        Path | None,
        typer.Option(
            "--profile",
            help="JSON of unit costs measured on your hardware (fields of evaluation.capacity.CostProfile); default: "
            "the figures this project's benchmarks measured.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Size the query service, Qdrant and ingestion for --qps and --corpus-chunks, from measured unit costs.

    Prints each part's replicas, cores and memory, then every assumption the plan rests on. The unit costs come
    from the benchmarks (bench/query.py, bench/index.py, bench/ingest.py) on a 2-core AMD EPYC with AVX2; measure
    yours and pass them with --profile.
    """
    from evaluation.capacity import CapacityError, CostProfile, Demand, plan

    try:
        demand = Demand(
            qps=qps,
            corpus_chunks=corpus_chunks,
            utilisation=utilisation,
            cores_per_replica=cores_per_replica,
            replication=replication,
            payload_in_ram=payload_in_ram,
            reindex_hours=reindex_hours,
        )
        result = plan(demand, CostProfile.load(profile))
    except CapacityError as exc:
        raise fail(str(exc), 2) from exc
    if as_json:
        typer.echo(json.dumps(result.to_json()))
        return
    typer.echo(f"for {qps:g} queries/s over {corpus_chunks:,} chunks:")
    for part in result.parts:
        typer.echo(
            f"  {part.name:<14} {part.replicas:>3} x  {part.cores:>6.1f} cores  {part.memory_gb:>7.1f} GB   {part.note}"
        )
    typer.echo(f"  {'total':<14}       {result.total_cores:>6.1f} cores  {result.total_memory_gb:>7.1f} GB")
    typer.echo("assumptions:")
    for line in result.assumptions:
        typer.echo(f"  - {line}")
