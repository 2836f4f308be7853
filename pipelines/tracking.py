"""MLflow helpers shared by every package: one place that knows where the tracking store is.

MLflow defaults to ``./mlruns`` relative to the working directory and calls a telemetry host; both are wrong here.
:func:`configure_mlflow` points it at ``settings.mlflow_tracking_uri`` (SQLite under ``RAGOPS_HOME`` by default) and
makes sure experiments store artifacts under ``RAGOPS_HOME`` too.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pipelines.settings import Settings

if TYPE_CHECKING:
    import mlflow

logger = logging.getLogger(__name__)


def configure_mlflow(settings: Settings) -> mlflow:  # type: ignore[valid-type]
    """Import mlflow, point it at the configured store and return the module."""
    import mlflow as _mlflow

    settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    (settings.home / "mlflow").mkdir(parents=True, exist_ok=True)
    _mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    _mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return _mlflow


def ensure_experiment(settings: Settings, name: str) -> str:
    """Create ``name`` (artifacts under ``RAGOPS_HOME``) if needed and return its id."""
    mlflow = configure_mlflow(settings)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = None
    if settings.mlflow_tracking_uri.startswith("sqlite:"):
        location = (settings.mlflow_artifacts_dir / name).as_uri()
    return str(mlflow.create_experiment(name, artifact_location=location))
