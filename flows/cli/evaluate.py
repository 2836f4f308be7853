"""`ragops eval` and `ragops finetune`: the deployment gate and the retraining cycle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.common import (
    JsonOpt,
    RichProgress,
    VerboseOpt,
    actor,
    app,
    build_settings,
    guarded,
    stderr_console,
)


@app.command("eval")
def eval_(
    testset: Annotated[
        str | None,
        typer.Option(
            "--testset",
            help="A bundled name (demo_qa), a QA .jsonl or a BEIR folder (default RAGOPS_EVAL__TESTSET).",
            show_default=False,
        ),
    ] = None,
    stack: Annotated[str, typer.Option("--stack", help="A registered version number, or 'champion'.")] = "champion",
    gate: Annotated[
        bool,
        typer.Option(
            "--gate",
            help="Check thresholds and regression against the champion; exit 4 when the gate fails.",
        ),
    ] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Evaluate a stack on a fixed test set and log the run to MLflow (experiment 'evaluation').

    Retrieval (nDCG@10, recall@k, MRR@10, hit rate), answers (exact match, token F1, containment, abstention,
    groundedness, citation validity, format) and latency per stage. With --gate, also the deployment gate: every
    configured threshold (RAGOPS_EVAL__THRESHOLDS) and no regression beyond tolerance against the champion's
    reference evaluation on the same test set; a passing gate is what `ragops stack promote` requires.
    """
    from evaluation.deploy import evaluate_stack
    from evaluation.testsets import load_testset
    from rag.stack import StackRegistry

    settings = build_settings(verbose)
    bar = None if as_json else EvalProgress()

    def body() -> Any:
        chosen = load_testset(testset, split=settings.eval.split) if testset else None
        with bar.shown() if bar else nullcontext():
            return evaluate_stack(
                settings,
                StackRegistry(settings),
                stack,
                testset=chosen,
                gate=gate,
                progress=bar.update if bar else None,
            )

    outcome = guarded(body)
    if as_json:
        typer.echo(json.dumps(outcome.to_json()))
    else:
        _print_eval(outcome)
    if outcome.gate is not None and not outcome.gate.passed:
        raise typer.Exit(4)


class EvalProgress:
    """One progress bar over the questions of a test set (stderr)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=stderr_console()
        )
        self._task: Any = None

    def update(self, done: int, total: int) -> None:
        """Move the bar (creates it on the first call)."""
        if self._task is None:
            self._task = self._progress.add_task("evaluate", total=total)
        self._progress.update(self._task, completed=done)

    @contextmanager
    def shown(self) -> Iterator[EvalProgress]:
        """Display the bar while the block runs."""
        with self._progress:
            yield self


@app.command()
def finetune(
    train: Annotated[
        Path | None,
        typer.Option(
            "--train",
            help="Labelled pairs: a BEIR folder (its train split) or a JSONL of {query, positive_doc_id"
            "[, negative_doc_ids]}. Default RAGOPS_FINETUNE__TRAIN, else the gate's BEIR test folder if it has a "
            "train split. Feedback pairs are always added; synthetic pairs when labels are scarce.",
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Epochs (default RAGOPS_FINETUNE__EPOCHS).")
    ] = None,
    promote: Annotated[
        bool, typer.Option("--promote/--no-promote", help="Promote the candidate when it beats the champion.")
    ] = True,
    shuffle_labels: Annotated[
        bool,
        typer.Option(
            "--shuffle-labels", help="Drill: train on deliberately wrong pairs; the gate must refuse the result."
        ),
    ] = False,
    no_labels: Annotated[
        bool,
        typer.Option(
            "--no-labels",
            help="Ignore labelled data, as a team with none would: train on feedback and synthetic pairs (title and "
            "sentence pairs kept by the round-trip filter, plus LLM questions when "
            "RAGOPS_FINETUNE__SYNTHETIC__QUESTIONS is local or endpoint).",
        ),
    ] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Retrain the embedder and promote it only if it beats the champion (the `retrain` flow, in this process).

    Assembles training pairs (labels, feedback, synthetic) with the gate's test questions excluded, validates them
    with great-expectations, fine-tunes MiniLM on CPU (MLflow experiment 'finetune', registered model 'embedder'),
    re-embeds the champion's collection into a shadow collection while the champion keeps serving, registers the
    candidate stack (alias 'challenger') and gates it against the champion. It is promoted when the gate passes and
    RAGOPS_FINETUNE__PRIMARY_METRIC improves by RAGOPS_FINETUNE__MARGIN, significantly; otherwise the champion stays
    and the reason is recorded on the candidate. Exit code 0 either way; 1 on an error.
    """
    from evaluation.retrain import RetrainRequest, retrain

    settings = build_settings(verbose)
    request = RetrainRequest(
        train=str(train) if train else None,
        epochs=epochs,
        promote=promote,
        shuffle_labels=shuffle_labels,
        no_labels=no_labels,
        actor=actor(),
    )
    progress = None if as_json else RichProgress()

    def body() -> Any:
        with progress.shown() if progress else nullcontext():
            return retrain(settings, request, progress=progress)

    outcome = guarded(body)
    if as_json:
        typer.echo(json.dumps(outcome.to_json()))
        return
    verdict = "promoted" if outcome.promoted else "not promoted; the champion stays"
    typer.echo(f"candidate stack v{outcome.candidate} {verdict}: {outcome.reason}")
    typer.echo(f"  champion            v{outcome.champion_before} -> v{outcome.champion_after}")
    typer.echo(f"  embedder version    {outcome.embedder_version} (registered model 'embedder')")
    typer.echo(f"  shadow collection   {outcome.collection}")
    typer.echo(f"  training pairs      {outcome.training['pairs']} {outcome.training['by_origin']}")
    if outcome.training["dropped"]:
        typer.echo(f"  dropped             {outcome.training['dropped']}")
    typer.echo("  seconds             " + ", ".join(f"{k} {v:.0f}" for k, v in outcome.seconds.items()))
    typer.echo(f"  MLflow runs         finetune {outcome.finetune_run_id}, evaluation {outcome.eval_run_id}")
    typer.echo(outcome.gate_summary)


def _print_eval(outcome: Any) -> None:
    result = outcome.result
    typer.echo(
        f"stack {result.stack_name} v{result.stack_version} on {result.testset_name} ({result.testset_sha256[:12]}), "
        f"{len(result.examples)} questions in {result.seconds:.1f} s"
    )
    for name, value in sorted(result.metrics.items()):
        typer.echo(f"  {name:<28} {value:10.4f}")
    for name, why in sorted(result.skipped.items()):
        typer.echo(f"  {name:<28}    skipped: {why}")
    if outcome.gate is not None:
        typer.echo(outcome.gate.summary())
    typer.echo(f"MLflow run: {outcome.run_id} (experiment 'evaluation')")
