"""The Prefect deployments ragops serves, with their schedules (pausable in the Prefect UI).

``flow.serve``/``prefect.serve`` runs them in one process without a work pool or Docker; the same definitions can
be applied to a work pool in production (see ``infra/``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flows.settings import Settings

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

EVALUATE_DEPLOYMENT = "nightly-champion"
INGEST_DEPLOYMENT = "hourly"
RETRAIN_DEPLOYMENT = "weekly"
MONITOR_DEPLOYMENT = "every-15-min"


def ingest_sources(settings: Settings) -> list[str]:
    """What the worker ingests on schedule: ``RAGOPS_INGEST__SOURCES``, or the demo corpus ``ragops up`` builds."""
    return list(settings.ingest.sources) or [str(settings.home / "demo-corpus")]


def ingest_deployments(settings: Settings) -> list[RunnerDeployment]:
    """``ingest/hourly`` (one per source, suffixed from the second on), on ``RAGOPS_INGEST__SCHEDULE_CRON``.

    Each deployment runs one flow run at a time (a late run is queued behind the running one, never run beside it).
    Runs of different sources into one collection are serialised by the index's own writer lock
    (:class:`pipelines.index.VectorIndex`), which also covers CLI runs that Prefect does not schedule.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows.ingest import ingest_flow

    out = []
    for n, source in enumerate(ingest_sources(settings)):
        name = INGEST_DEPLOYMENT if n == 0 else f"{INGEST_DEPLOYMENT}-{n + 1}"
        deployment = ingest_flow.to_deployment(
            name=name,
            cron=settings.ingest.schedule_cron,
            parameters={"source": source},
            description=f"Ingest {source}: incremental, validated, published atomically.",
            tags=["ragops", "ingestion"],
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        )
        out.append(_sync(deployment))
    return out


def all_deployments(settings: Settings) -> list[RunnerDeployment]:
    """Every deployment the worker serves."""
    return [
        *ingest_deployments(settings),
        evaluation_deployment(settings),
        retrain_deployment(settings),
        monitor_deployment(settings),
        *promotion_deployments(),
    ]


def monitor_deployment(settings: Settings) -> RunnerDeployment:
    """``monitor/every-15-min``: the last window against the monitor's rules, every
    ``RAGOPS_MONITOR__INTERVAL_MINUTES`` (the name keeps the default's wording)."""
    from flows.monitor import monitor_flow

    deployment = monitor_flow.to_deployment(
        name=MONITOR_DEPLOYMENT,
        interval=settings.monitor.interval_minutes * 60.0,
        parameters={"window_minutes": None, "drift": True},
        description="Latency percentiles, error rate, cost, guardrail triggers, abstentions, thumbs-down share and "
        "query drift of the last window; alert (Alertmanager webhook) and fail on a breach.",
        tags=["ragops", "monitoring"],
    )
    return _sync(deployment)


def retrain_deployment(settings: Settings) -> RunnerDeployment:
    """``retrain/weekly``: fine-tune, shadow-index, gate and maybe promote, on ``RAGOPS_FINETUNE__SCHEDULE_CRON``."""
    from flows.retrain import retrain_flow

    deployment = retrain_flow.to_deployment(
        name=RETRAIN_DEPLOYMENT,
        cron=settings.finetune.schedule_cron,
        parameters={"train": None, "epochs": None, "promote": True},
        description="Retrain the embedder on labelled pairs and feedback, build a shadow index, gate the candidate "
        "against the champion and promote it only when it is better.",
        tags=["ragops", "training"],
    )
    return _sync(deployment)


def evaluation_deployment(settings: Settings) -> RunnerDeployment:
    """``evaluate/nightly-champion``: the champion on the gate's test set, on ``RAGOPS_EVAL__SCHEDULE_CRON``."""
    from flows.evaluate import evaluate_flow

    deployment = evaluate_flow.to_deployment(
        name=EVALUATE_DEPLOYMENT,
        cron=settings.eval.schedule_cron,
        parameters={"stack": "champion", "testset": None, "gate": True},
        description="Re-evaluate the champion on the fixed test set; alert and fail on a regression.",
        tags=["ragops", "evaluation"],
    )
    return _sync(deployment)


def promotion_deployments() -> list[RunnerDeployment]:
    """``promote/manual`` and ``rollback/manual``: no schedule, run from the UI with parameters."""
    from flows.evaluate import promote_flow, rollback_flow

    return [
        _sync(
            promote_flow.to_deployment(
                name="manual", description="Promote a version that passed the gate.", tags=["ragops", "registry"]
            )
        ),
        _sync(
            rollback_flow.to_deployment(
                name="manual", description="Roll the champion back to the previous one.", tags=["ragops", "registry"]
            )
        ),
    ]


def _sync(deployment: object) -> RunnerDeployment:
    """``to_deployment`` is typed sync-or-async (Prefect's ``async_dispatch``); called from sync code it is sync."""
    from prefect.deployments.runner import RunnerDeployment

    if not isinstance(deployment, RunnerDeployment):
        raise TypeError(f"expected a RunnerDeployment, got {type(deployment).__name__}")
    return deployment
