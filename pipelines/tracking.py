"""MLflow helpers shared by every package: one place that knows where the tracking store is.

MLflow defaults to ``./mlruns`` relative to the working directory and calls a telemetry host; both are wrong here.
:func:`configure_mlflow` points it at ``settings.mlflow_tracking_uri`` (SQLite under ``RAGOPS_HOME`` by default) and
makes sure experiments store artifacts under ``RAGOPS_HOME`` too.
"""

from __future__ import annotations

import json
import logging
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pipelines.settings import PipelineSettings

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipelines.ingest import IngestReport

logger = logging.getLogger(__name__)


def configure_mlflow(settings: PipelineSettings) -> ModuleType:
    """Import mlflow, point it at the configured store and return the module."""
    import mlflow as _mlflow

    settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    (settings.home / "mlflow").mkdir(parents=True, exist_ok=True)
    _mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    _mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return _mlflow


def mlflow_client(settings: PipelineSettings) -> MlflowClient:
    """An MLflow client bound to the configured tracking and registry store (one store holds both)."""
    from mlflow import MlflowClient

    configure_mlflow(settings)
    uri = settings.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(settings: PipelineSettings, name: str) -> str:
    """Create ``name`` (artifacts under ``RAGOPS_HOME``) if needed and return its id."""
    mlflow = configure_mlflow(settings)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    if settings.mlflow_tracking_uri.startswith("sqlite:"):
        location = (settings.mlflow_artifacts_dir / name).as_uri()
    return str(mlflow.create_experiment(name, artifact_location=location))


def ensure_registered_model(client: Any, name: str, description: str) -> None:
    """Create the registered model ``name`` unless it exists (concurrent creators are fine)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=description)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def log_ingest_report(settings: PipelineSettings, report: IngestReport, *, params: dict[str, str]) -> str:
    """Keep the run's report with the run: ``<home>/runs/<run_id>/report.json`` and an MLflow run in ``ingestion``.

    Returns the MLflow run id.
    """
    run_dir = settings.runs_dir / report.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    report_path = run_dir / "report.json"
    report_path.write_text(json.dumps(report.to_json(), indent=1, ensure_ascii=False))
    mlflow = configure_mlflow(settings)
    experiment_id = ensure_experiment(settings, "ingestion")
    counters = {
        k: float(v)
        for k, v in report.to_json().items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "index_version"
    }
    counters.update({f"stage_seconds_{k}": v for k, v in report.stage_seconds.items()})
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"ingest {report.collection}") as run:
        mlflow.log_params({**params, "collection": report.collection, "source": report.source})
        mlflow.log_metrics(counters)
        mlflow.set_tags(
            {
                "ragops.run_id": report.run_id,
                "ragops.index_version": str(report.index_version),
                "ragops.published": str(report.published).lower(),
                "ragops.validation_success": str(all(v.success for v in report.validation)).lower(),
            }
        )
        mlflow.log_artifact(str(report_path))
        return str(run.info.run_id)
