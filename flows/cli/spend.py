"""`ragops spend`: what the served requests cost, by tenant, API key or stack version, and a 30-day forecast."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from flows.cli.common import JsonOpt, app, build_settings, fail, guarded

_DAY_S = 86_400.0
_UNITS = {"d": _DAY_S, "h": 3600.0, "m": 60.0}


def parse_since(value: str, now: float) -> float:
    """``30d``, ``12h``, ``90m`` ago, or an ISO date/time (UTC when it has no zone), as epoch seconds."""
    text = value.strip()
    if text[-1:] in _UNITS and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * _UNITS[text[-1]]
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise fail(f"--since takes e.g. 30d, 12h or 2026-11-01, not {value!r}", 2) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@app.command("spend")
def spend(
    by: Annotated[
        str, typer.Option("--by", help="Group by tenant, key (the API key or user) or stack (name and version).")
    ] = "tenant",
    since: Annotated[
        str, typer.Option("--since", help="Window start: 30d, 12h, 90m ago or an ISO date (UTC).")
    ] = "30d",
    forecast: Annotated[
        bool,
        typer.Option(
            "--forecast/--no-forecast",
            help="Also forecast each tenant's next 30 days (statsmodels ETS, 80% interval; needs 14 days of history) "
            "and log it to MLflow (experiment `spend`).",
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Tokens and cost of the served requests from the request store (the stack's per-model prices, recorded with
    every request), grouped by tenant, key or stack version, with a per-tenant forecast of the next 30 days."""
    from rag.store.ledger import GROUPINGS

    if by not in GROUPINGS:
        raise fail(f"--by takes one of {', '.join(GROUPINGS)}, not {by!r}", 2)
    now = time.time()
    start = parse_since(since, now)
    if start >= now:
        raise fail(f"--since {since!r} is not in the past", 2)
    settings = build_settings()

    def body() -> dict[str, Any]:
        from evaluation.monitor import open_store
        from evaluation.spend import forecast_tenants, log_forecasts
        from rag.store.ledger import DAY_S

        with open_store(settings) as store:
            rows = store.spend(by, start, now)
            daily = store.daily_spend(now - 180 * DAY_S, now) if forecast else []
        out: dict[str, Any] = {
            "since": start,
            "until": now,
            "by": by,
            "groups": [
                {
                    "group": r.group,
                    "requests": r.requests,
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                    "cost_usd": round(r.cost_usd, 6),
                }
                for r in rows
            ],
        }
        if forecast:
            last_day = int(now // DAY_S) - 1  # the last complete UTC day
            first_day = min((d.day for d in daily), default=last_day)
            forecasts = forecast_tenants(daily, first_day, last_day)
            out["forecast"] = [f.to_json() for f in forecasts]
            out["mlflow_run_id"] = log_forecasts(settings, forecasts, until=now) if forecasts else None
        return out

    report = guarded(body)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"spend by {by} since {time.strftime('%Y-%m-%d %H:%M', time.gmtime(start))} UTC")
    typer.echo(f"  {'group':<32} {'requests':>9} {'tokens in':>11} {'tokens out':>11} {'cost USD':>12}")
    for g in report["groups"]:
        typer.echo(
            f"  {g['group'][:32]:<32} {g['requests']:>9} {g['prompt_tokens']:>11} {g['completion_tokens']:>11} "
            f"{g['cost_usd']:>12.4f}"
        )
    for f in report.get("forecast", []):
        fc = f["forecast"]
        if fc is None:
            typer.echo(f"  forecast {f['tenant']}: too little history ({f['history_days']} days, needs 14)")
        else:
            typer.echo(
                f"  forecast {f['tenant']}: next 30 days {fc['total']:.2f} USD "
                f"({int(fc['level'] * 100)}% interval {fc['lower']:.2f}-{fc['upper']:.2f}); "
                f"last 30 days {f['last_30d_usd']:.2f}"
            )
