"""The Prefect flow `ingest` under Prefect's test harness, and the MLflow run it leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.settings import Settings
from tests.fixtures.files import write_bad_inputs, write_sample_docs

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_flow_ingests_logs_to_mlflow_and_publishes_summary(
    prefect_harness: None, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.ingest import ingest_flow

    source = tmp_path / "docs"
    write_sample_docs(source)
    write_bad_inputs(source / "bad")
    # The flow builds its own Settings from the environment (as a deployment would): allow the bad files here.
    monkeypatch.setenv("RAGOPS_INGEST__MAX_FAILURE_SHARE", "1.0")
    state = ingest_flow(source=str(source), tenant="acme", return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["documents_new"] == 5
    assert result["documents_failed"] >= 8
    assert result["points_total"] >= 5
    reasons = {q["doc_id"]: q["reason"] for q in result["quarantined"]}
    assert "encrypted" in reasons["acme:bad/encrypted.pdf"]  # ids are prefixed with the tenant
    assert "too large" in reasons["acme:bad/big.txt"]

    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    runs = mlflow.search_runs(experiment_names=["ingestion"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics["documents_new"] == 5
    assert run.data.metrics["points_total"] == result["points_total"]
    assert run.data.tags["ragops.run_id"] == result["run_id"]
    assert run.data.params["collection"] == "docs"
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
    assert "report.json" in artifacts

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def summary() -> str:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ingest-summary"]))
            )
            return str(found[0].data) if found else ""

    markdown = asyncio.run(summary())
    assert "Quarantined" in markdown and "encrypted" in markdown

    second = ingest_flow(source=str(source), tenant="acme")
    assert second["embeddings_computed"] == 0
    assert second["published"] is False


def test_the_flow_partitions_on_a_local_dask_cluster_with_the_same_outcome(
    prefect_harness: None, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files partitioned by two Dask worker processes land exactly as on the flow's threads: the same documents,
    the same quarantine reasons, each once; the subflow ran on the Dask task runner."""
    from prefect.client.orchestration import get_client

    from flows.ingest import ingest_flow

    source = tmp_path / "docs"
    write_sample_docs(source)
    write_bad_inputs(source / "bad")
    monkeypatch.setenv("RAGOPS_INGEST__MAX_FAILURE_SHARE", "1.0")
    monkeypatch.setenv("RAGOPS_INGEST__DASK_WORKERS", "2")
    on_dask = ingest_flow(source=str(source), collection="on_dask")
    monkeypatch.setenv("RAGOPS_INGEST__DASK_WORKERS", "0")
    on_threads = ingest_flow(source=str(source), collection="on_threads")
    for key in ("documents_new", "documents_failed", "points_total", "chunks_upserted"):
        assert on_dask[key] == on_threads[key], key
    assert on_dask["documents_new"] == 5 and on_dask["points_total"] >= 5
    reasons = {q["doc_id"]: q["reason"] for q in on_dask["quarantined"]}
    assert reasons == {q["doc_id"]: q["reason"] for q in on_threads["quarantined"]}
    assert len(on_dask["quarantined"]) == len(reasons)  # each failure once

    async def subflow_runs() -> list[str]:
        async with get_client() as client:
            runs = await client.read_flow_runs()
            flows = {f.id: f.name for f in await client.read_flows()}
            return [flows[r.flow_id] for r in runs if r.state is not None and r.state.is_completed()]

    names = asyncio.run(subflow_runs())
    assert names.count("ingest-partition") == 1  # only the Dask run used the partition subflow
