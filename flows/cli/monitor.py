"""`ragops monitor run|status`: evaluate the last window of served traffic on demand, and show the last verdict."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from flows.cli.common import JsonOpt, app, build_settings, fail, guarded

BREACH_EXIT = 4
"""Exit code of ``ragops monitor run`` when a rule broke (the report is printed first)."""

monitor_app = typer.Typer(
    help="Monitoring of the served traffic: latency, errors, cost, guardrails, abstentions, feedback, query drift.",
    no_args_is_help=True,
)
app.add_typer(monitor_app, name="monitor")


def _print(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report))
        return
    figures = report["figures"]
    typer.echo(f"window {report['since']:.0f}-{report['until']:.0f}: {int(figures['requests'])} requests")
    for name, value in figures.items():
        if name != "requests":
            typer.echo(f"  {name:<24} {value:.6g}")
    if report["breaches"]:
        for breach in report["breaches"]:
            typer.secho(f"  BREACH {breach['rule']}: {breach['message']}", fg=typer.colors.RED)
    else:
        typer.echo(f"  no breach ({len(report['checked'])} rules checked)")


@monitor_app.command("run")
def run(
    window: Annotated[
        float | None,
        typer.Option("--window", min=0.01, help="Window in minutes (default RAGOPS_MONITOR__WINDOW_MINUTES)."),
    ] = None,
    drift: Annotated[bool, typer.Option("--drift/--no-drift", help="Test the window's questions for drift.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate the last window once: figures, query drift and rules; log it to MLflow (experiment `monitoring`),
    keep it for `ragops monitor status`, POST breaches to RAGOPS_MONITOR__WEBHOOK_URL. Exits 4 on a breach."""
    settings = build_settings()

    def body() -> dict[str, Any]:
        from evaluation.monitor import (
            alertmanager_alerts,
            default_embed,
            log_window,
            open_store,
            post_alerts_retried,
            reference_questions,
            run_window,
            save_status,
        )

        with open_store(settings) as store:
            report = run_window(
                settings,
                store,
                embed=default_embed(settings) if drift else None,
                reference=reference_questions(settings) if drift else (),
                window_minutes=window,
            )
        run_id = log_window(settings, report)
        save_status(settings, report, run_id=run_id)
        if report.breaches and settings.monitor.webhook_url:
            post_alerts_retried(settings.monitor.webhook_url, alertmanager_alerts(report))
        return {**report.to_json(), "mlflow_run_id": run_id}

    report = guarded(body)
    _print(report, as_json)
    if report["breaches"]:
        raise fail("; ".join(b["message"] for b in report["breaches"]), BREACH_EXIT)


@monitor_app.command("status")
def status(as_json: JsonOpt = False) -> None:
    """The last evaluated window (by `ragops monitor run` or the `monitor` flow) and its breaches."""
    settings = build_settings()
    from evaluation.monitor import load_status

    report = load_status(settings)
    if report is None:
        raise fail("no monitor run yet: run `ragops monitor run` (or start `ragops up`, which schedules it)", 1)
    _print(report, as_json)
