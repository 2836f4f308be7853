"""The offline and no-telemetry environment every ragops process runs with.

Libraries in this stack call home or fetch models on first use (unstructured, MLflow, Prefect, Hugging Face). The
platform runs offline, so entry points call :func:`apply_offline_env` before importing them and pass
:func:`child_env` to every subprocess they start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pipelines.settings import PipelineSettings

OFFLINE_ENV: Mapping[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "DO_NOT_TRACK": "1",
    "SCARF_NO_ANALYTICS": "1",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "ANONYMIZED_TELEMETRY": "false",
    "GX_ANALYTICS_ENABLED": "False",
}


def offline_env(settings: PipelineSettings) -> dict[str, str]:
    """The variables to set for ``settings``: the fixed offline set plus state locations under ``home``."""
    env = dict(OFFLINE_ENV)
    env["PREFECT_HOME"] = str(settings.prefect_home)
    env["HF_HOME"] = str(settings.cache_dir / "hf")
    env["MPLCONFIGDIR"] = str(settings.cache_dir / "matplotlib")
    # Prefect's own API: only when configured; otherwise flows run without a server (see README, "What runs where").
    if settings.prefect.api_url:
        env["PREFECT_API_URL"] = settings.prefect.api_url
    return env


def apply_offline_env(settings: PipelineSettings) -> None:
    """Set the offline environment in this process (explicit values already set by the user win)."""
    for key, value in offline_env(settings).items():
        if key in OFFLINE_ENV:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)


def child_env(settings: PipelineSettings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A full environment for a subprocess: the current one plus the offline set and ``extra``."""
    env = dict(os.environ)
    env.update(offline_env(settings))
    if extra:
        env.update(extra)
    return env
