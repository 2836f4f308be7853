"""Capacity planning: the plan grows with the load as its rules say, keeps two service replicas and the asked
replication, reads a measured profile, and refuses impossible questions with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evaluation.capacity import CapacityError, CostProfile, Demand, plan
from flows.cli import app


def parts(qps: float, chunks: int, **demand: object) -> dict[str, object]:
    result = plan(Demand(qps=qps, corpus_chunks=chunks, **demand), CostProfile())  # type: ignore[arg-type]
    return {p.name: p for p in result.parts}


def test_service_cores_follow_the_rate_and_never_fewer_than_two_replicas() -> None:
    profile = CostProfile()
    small = parts(1, 1_000)["query_service"]
    assert small.replicas == 2  # one may fail
    big = parts(1_000, 1_000)["query_service"]
    busy = 1_000 * profile.service_core_ms_per_request / 1000 / 0.6
    assert big.cores >= busy and big.cores - busy < 2  # whole replicas of 2 cores
    assert big.memory_gb == pytest.approx(big.replicas * profile.service_rss_mb / 1024, abs=0.1)


def test_qdrant_memory_is_the_sizing_rule_times_replication() -> None:
    n = 10_000_000
    on_disk = parts(10, n, replication=3)["qdrant"]
    per_copy = n * 384 * 4 * 1.5 / 1024**3 + 0.5
    assert on_disk.replicas == 3 and on_disk.memory_gb == pytest.approx(3 * per_copy, abs=0.1)
    in_ram = parts(10, n, replication=3, payload_in_ram=True)["qdrant"]
    assert in_ram.memory_gb == pytest.approx(3 * (per_copy + n * 900 / 1024**3), abs=0.1)


def test_ingestion_workers_reembed_the_corpus_within_the_window() -> None:
    profile = CostProfile()
    n = 5_000_000
    core_hours = n * profile.ingest_core_ms_per_chunk / 1000 / 3600
    for hours in (1.0, 4.0, 24.0):
        workers = parts(10, n, reindex_hours=hours)["ingestion"].replicas
        assert core_hours / (workers * 2) <= hours  # enough workers
        assert workers == 1 or core_hours / ((workers - 1) * 2) > hours  # and no more than needed


def test_the_cli_prints_json_reads_a_profile_and_refuses_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    default = runner.invoke(app, ["capacity", "--qps", "100", "--corpus-chunks", "2000000", "--json"])
    assert default.exit_code == 0, default.output
    body = json.loads(default.stdout)
    assert set(body["parts"]) == {"query_service", "qdrant", "ingestion"} and body["assumptions"]
    measured = tmp_path / "profile.json"
    measured.write_text(json.dumps({"service_core_ms_per_request": 179.0, "source": "a slow machine"}))
    slower = runner.invoke(
        app, ["capacity", "--qps", "100", "--corpus-chunks", "2000000", "--json", "--profile", str(measured)]
    )
    assert slower.exit_code == 0, slower.output
    slow = json.loads(slower.stdout)
    assert slow["parts"]["query_service"]["cores"] > 5 * body["parts"]["query_service"]["cores"]
    assert any("a slow machine" in a for a in slow["assumptions"])
    text = runner.invoke(app, ["capacity", "--qps", "5", "--corpus-chunks", "1000"])
    assert text.exit_code == 0 and "assumptions:" in text.stdout and "query_service" in text.stdout

    bad = runner.invoke(app, ["capacity", "--qps", "-1", "--corpus-chunks", "10"])
    assert bad.exit_code == 2 and "--qps must be positive" in bad.output
    measured.write_text('{"service_core_ms_per_request": "fast"}')
    wrong = runner.invoke(app, ["capacity", "--qps", "1", "--corpus-chunks", "10", "--profile", str(measured)])
    assert wrong.exit_code == 2 and "is not a cost profile" in wrong.output
    missing = runner.invoke(app, ["capacity", "--qps", "1", "--corpus-chunks", "10", "--profile", "/nonexistent"])
    assert missing.exit_code == 2 and "cannot read the cost profile" in missing.output
    with pytest.raises(CapacityError):
        Demand(qps=1, corpus_chunks=0)
