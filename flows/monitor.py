"""The Prefect flow ``monitor``: every interval, the last window of served traffic against its rules.

Each run evaluates the window (:func:`evaluation.monitor.run_window`: latency percentiles, error rate, cost per
request, guardrail trigger rate, abstention rate, thumbs-down share, query drift), logs the figures as one run of
the MLflow experiment ``monitoring`` (so the MLflow UI plots them over time), keeps the report for ``ragops monitor
status``, POSTs each breach to the Alertmanager-compatible webhook ``RAGOPS_MONITOR__WEBHOOK_URL`` (retried), and
then fails with the breaches' message, so the Prefect UI and its notifications show it. When an A/B experiment runs
(``ragops stack experiment start``) each run also compares its arms (:mod:`evaluation.ab`) and records the verdict
on the candidate. The deployment
``monitor/every-15-min`` is defined in :mod:`flows.deployments`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from evaluation.ab import check_experiment
from evaluation.errors import MonitorBreach
from evaluation.monitor import (
    MonitorReport,
    alertmanager_alerts,
    default_embed,
    log_window,
    open_store,
    post_alerts,
    reference_questions,
    run_window,
    save_status,
)
from flows.settings import Settings
from pipelines.env import apply_offline_env


def _settings() -> Settings:
    settings = Settings()
    apply_offline_env(settings)
    settings.ensure_dirs()
    return settings


@task(name="evaluate-window", cache_policy=NO_CACHE)
def window_task(settings: Settings, window_minutes: float | None, drift: bool) -> MonitorReport:
    """Figures, drift and rules of the window ending now."""
    with open_store(settings) as store:
        return run_window(
            settings,
            store,
            embed=default_embed(settings) if drift else None,
            reference=reference_questions(settings) if drift else (),
            window_minutes=window_minutes,
        )


@task(name="log-window", cache_policy=NO_CACHE)
def log_task(settings: Settings, report: MonitorReport) -> str:
    """One MLflow run in ``monitoring``; the report kept for ``ragops monitor status``."""
    run_id = log_window(settings, report)
    save_status(settings, report, run_id=run_id)
    return run_id


@task(name="compare-arms", cache_policy=NO_CACHE)
def experiment_task(settings: Settings) -> dict[str, Any] | None:
    """The running A/B experiment's comparison, recorded on the candidate (None when none runs)."""
    found = check_experiment(settings)
    if found is None:
        return None
    report, status = found
    return {**report.to_json(), "status": status}


@task(name="post-alerts", retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE)
def alert_task(url: str, alerts: list[dict[str, Any]]) -> None:
    """POST the breaches (retried: a receiver may be briefly down)."""
    post_alerts(url, alerts)


@flow(name="monitor")
def monitor_flow(window_minutes: float | None = None, drift: bool = True) -> dict[str, Any]:
    """Evaluate the last window; alert and fail when a rule broke."""
    logger = get_run_logger()
    settings = _settings()
    report = window_task(settings, window_minutes, drift)
    run_id = log_task(settings, report)
    logger.info("monitor window: %s (MLflow run %s)", report.figures(), run_id)
    experiment = experiment_task(settings)
    if experiment is not None:
        logger.info("experiment %s: %s", experiment["experiment"]["id"], experiment["status"])
    if report.breaches:
        url = settings.monitor.webhook_url
        if url:
            alert_task(url, alertmanager_alerts(report))
        raise MonitorBreach(report.message())
    return {**report.to_json(), "experiment": experiment}
