"""Prefect flows around the evaluation gate: `evaluate` (nightly on the champion), `promote` and `rollback`.

``evaluate`` re-evaluates a stack (the champion by default) on the configured test set and gates it against the
champion's reference evaluation. When the *champion* fails its gate, that is a regression in production (new data
ingested, a changed index, a drifting LLM): the flow POSTs an alert to ``RAGOPS_EVAL__WEBHOOK_URL`` (if set) and
then fails with the gate's message, so the Prefect UI, its notifications and the run history all show it. The
deployment definitions live in :mod:`flows.deployments`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from evaluation.alerts import Alert, send_webhook
from evaluation.deploy import EvalOutcome, evaluate_stack, promote_gated
from evaluation.testsets import load_testset
from flows.settings import Settings
from pipelines.env import apply_offline_env


class RegressionDetected(RuntimeError):
    """The champion failed its gate on a scheduled evaluation."""


def _settings() -> Settings:
    settings = Settings()
    apply_offline_env(settings)
    settings.ensure_dirs()
    return settings


@task(name="evaluate-stack", cache_policy=NO_CACHE)
def evaluate_task(settings: Settings, stack: str, testset: str | None, gate: bool) -> EvalOutcome:
    """Run the evaluation and log it to MLflow."""
    from rag.stack import StackRegistry

    chosen = load_testset(testset, split=settings.eval.split) if testset else None
    return evaluate_stack(settings, StackRegistry(settings), stack, testset=chosen, gate=gate)


@task(name="send-alert", retries=3, retry_delay_seconds=[2, 10, 30], cache_policy=NO_CACHE)
def alert_task(url: str, alert: Alert) -> None:
    """POST the alert (retried: a webhook receiver may be briefly down)."""
    send_webhook(url, alert)


def evaluation_markdown(outcome: EvalOutcome) -> str:
    """A summary of the evaluation for the Prefect UI."""
    result = outcome.result
    lines = [
        f"# Evaluation of `{result.stack_name}` v{result.stack_version} on `{result.testset_name}`",
        "",
        f"test set hash `{result.testset_sha256[:12]}`, {len(result.examples)} questions, {result.seconds:.1f} s, "
        f"MLflow run `{outcome.run_id}`",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value:.4f} |" for name, value in sorted(result.metrics.items())]
    if outcome.gate is not None:
        lines += ["", "## Gate", "", "```", outcome.gate.summary(), "```"]
    return "\n".join(lines)


@flow(name="evaluate")
def evaluate_flow(stack: str = "champion", testset: str | None = None, gate: bool = True) -> dict[str, Any]:
    """Evaluate a stack (default: the champion) on the gate's test set; alert and fail when the champion regresses.

    Args:
        stack: 'champion' or a registered version number.
        testset: A bundled name, QA .jsonl or BEIR folder (default RAGOPS_EVAL__TESTSET).
        gate: Check thresholds and regression against the champion's reference evaluation.
    """
    settings = _settings()
    logger = get_run_logger()
    outcome = evaluate_task(settings, stack, testset, gate)
    create_markdown_artifact(key="evaluation", markdown=evaluation_markdown(outcome), description="evaluation")
    report = outcome.gate
    if report is not None and not report.passed:
        result = outcome.result
        title = f"ragops: stack v{result.stack_version} failed its evaluation gate on {result.testset_name}"
        if settings.eval.webhook_url:
            alert = Alert(
                title=title,
                text=report.summary(),
                details={"run_id": outcome.run_id, "stack_version": result.stack_version, "gate": report.to_json()},
            )
            alert_task(settings.eval.webhook_url, alert)
        raise RegressionDetected(f"{title} (MLflow run {outcome.run_id})\n{report.summary()}")
    logger.info("evaluation %s: %s", outcome.run_id, report.summary() if report else "no gate")
    return outcome.to_json()


@flow(name="promote")
def promote_flow(
    version: int, reason: str = "promoted from Prefect", override_reason: str | None = None
) -> dict[str, Any]:
    """Make VERSION the champion if it passed the gate (or with an explicit, recorded override reason)."""
    from dataclasses import asdict

    from rag.security.gate import record_action
    from rag.stack import StackRegistry

    settings = _settings()
    promotion = promote_gated(
        settings, StackRegistry(settings), version, actor="prefect", reason=reason, override=override_reason
    )
    get_run_logger().info("champion: v%s -> v%s", promotion.previous, promotion.version)
    if promotion.changed:
        record_action(
            settings,
            "stack.promote",
            actor="prefect",
            target=f"v{promotion.version}",
            detail={"previous": promotion.previous, "reason": reason, "override": override_reason},
        )
    return asdict(promotion)


@flow(name="rollback")
def rollback_flow(reason: str = "rolled back from Prefect") -> dict[str, Any]:
    """Move the champion back to the previous champion; the service follows within its reload interval."""
    from dataclasses import asdict

    from rag.security.gate import record_action
    from rag.stack import StackRegistry

    settings = _settings()
    result = StackRegistry(settings).rollback(actor="prefect", reason=reason)
    record_action(
        settings,
        "stack.rollback",
        actor="prefect",
        target=f"v{result.version}",
        detail={"previous": result.previous, "reason": reason},
    )
    get_run_logger().warning("rolled back: v%s -> v%s", result.previous, result.version)
    return asdict(result)
