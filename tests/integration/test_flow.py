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
