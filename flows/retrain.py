"""Prefect flow `retrain`: fine-tune the embedder, build a shadow index, gate the candidate, promote or keep.

A thin wrapper over :func:`evaluation.retrain.retrain` (assemble the training set, fine-tune and register, build the
shadow index, register and evaluate the candidate, decide, garbage-collect): progress goes to the flow run's log and
the outcome to a markdown artifact. The deployment ``retrain/weekly`` runs it on ``RAGOPS_FINETUNE__SCHEDULE_CRON``;
a manual run from the UI can pass ``train`` (labelled data), ``epochs`` and ``promote``. Nothing is retried: a
failed fine-tune is bad data or a bug, not a transient fault, and a retry would only burn the CPU budget again.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from evaluation.retrain import RetrainOutcome, RetrainRequest, retrain
from flows.settings import Settings
from pipelines.env import apply_offline_env
from pipelines.ingest import LogProgress


def retrain_markdown(outcome: RetrainOutcome) -> str:
    """The cycle's summary for the Prefect UI."""
    decision = "**promoted**" if outcome.promoted else "**kept the champion**"
    lines = [
        f"# Retraining: candidate v{outcome.candidate} {decision}",
        "",
        outcome.reason,
        "",
        f"- champion before v{outcome.champion_before}, after v{outcome.champion_after}",
        f"- embedder version {outcome.embedder_version}, shadow collection `{outcome.collection}`",
        f"- training pairs {outcome.training['pairs']} {outcome.training['by_origin']}, "
        f"dropped {outcome.training['dropped']}",
        *_synthetic_lines(outcome),
        f"- MLflow: fine-tuning run `{outcome.finetune_run_id}`, evaluation run `{outcome.eval_run_id}`",
        f"- garbage collected: {outcome.garbage_collected}",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in outcome.seconds.items()],
        "",
        "```",
        outcome.gate_summary,
        "```",
    ]
    return "\n".join(lines)


def _synthetic_lines(outcome: RetrainOutcome) -> list[str]:
    synthetic = outcome.training.get("synthetic")
    if not synthetic:
        return []
    return [
        f"- synthetic candidates {synthetic['generated']}, kept {synthetic['kept']} "
        f"(questions by {synthetic['model'] or 'no LLM'} in {synthetic['llm_seconds']} s)"
    ]


@flow(name="retrain")
def retrain_flow(
    train: str | None = None, epochs: int | None = None, promote: bool = True, no_labels: bool = False
) -> dict[str, Any]:
    """Fine-tune the embedder on labelled pairs, feedback and synthetic pairs; promote the result if it is better.

    Args:
        train: Labelled data, a BEIR folder (train split) or JSONL (default RAGOPS_FINETUNE__TRAIN).
        epochs: Training epochs (default RAGOPS_FINETUNE__EPOCHS).
        promote: False evaluates the candidate without promoting it.
        no_labels: Ignore labelled data: feedback and synthetic pairs only.
    """
    settings = Settings()
    apply_offline_env(settings)
    settings.ensure_dirs()
    request = RetrainRequest(train=train, epochs=epochs, promote=promote, no_labels=no_labels, actor="prefect")
    outcome = retrain(settings, request, progress=LogProgress(get_run_logger()))
    create_markdown_artifact(key="retrain", markdown=retrain_markdown(outcome), description="retraining cycle")
    get_run_logger().info("retrain: %s", outcome.reason)
    return outcome.to_json()
