"""Spend forecasts (statsmodels ETS) on synthetic series with a known trend, and ``ragops spend`` over a real request
store: the ledger's groups, a forecast per tenant with enough history, the MLflow run, and bad options as exit 2."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
from typer.testing import CliRunner

from evaluation.spend import MIN_HISTORY_DAYS, daily_series, forecast_daily
from flows.settings import Settings
from rag.store import RequestRecord, RequestStore
from rag.store.ledger import DailySpend


def test_a_linear_trend_is_projected_with_the_truth_inside_the_interval() -> None:
    rng = np.random.default_rng(3)
    days = np.arange(60)
    series = 5.0 + 0.2 * days + rng.normal(0, 0.5, days.size)  # dollars a day, growing 20 cents a day
    truth = float(sum(5.0 + 0.2 * (60 + i) for i in range(30)))  # 30 days of the noiseless line: 447
    fc = forecast_daily(series)
    assert fc.lower <= truth <= fc.upper
    assert fc.total == pytest.approx(truth, rel=0.03)
    assert fc.trend_per_day == pytest.approx(0.2, abs=0.03)
    assert fc.total > 30 * series[-7:].mean()  # a trend, not the last week's average carried forward
    assert fc.upper - fc.lower < 0.2 * fc.total  # an interval narrow enough to plan with


def test_a_falling_series_never_forecasts_negative_cost() -> None:
    series = np.maximum(0.0, 10.0 - 0.5 * np.arange(30)) + np.random.default_rng(0).normal(0, 0.1, 30).clip(0)
    fc = forecast_daily(series)
    assert min(fc.daily_mean) >= 0.0 and fc.lower >= 0.0 and fc.total < 30 * series[:7].mean()


def test_too_little_history_is_refused_and_a_flat_series_stays_flat() -> None:
    with pytest.raises(ValueError, match="at least 14 days"):
        forecast_daily([1.0] * (MIN_HISTORY_DAYS - 1))
    flat = forecast_daily([2.0] * 20)
    assert (flat.total, flat.lower, flat.upper) == (60.0, 60.0, 60.0)


def test_missing_days_are_zero_cost() -> None:
    rows = [DailySpend("acme", 10, 3, 1.5, 30), DailySpend("acme", 12, 1, 0.5, 10), DailySpend("beta", 11, 1, 2.0, 5)]
    assert daily_series(rows, 10, 12) == {"acme": [1.5, 0.0, 0.5], "beta": [0.0, 2.0, 0.0]}


@pytest.fixture
def store(settings: Settings) -> Iterator[RequestStore]:
    with RequestStore(settings.store.resolve_url(settings.home), purge_interval_s=None) as opened:
        yield opened


def test_cli_reports_the_ledger_and_forecasts_each_tenant(settings: Settings, store: RequestStore) -> None:
    from flows.cli import app

    today = int(time.time() // 86_400)
    noise = np.random.default_rng(5).normal(0, 0.01, 26)  # a cent of noise: real spend is never a straight line
    n = 0
    for back in range(1, 26):  # acme: 25 full days, cost growing a cent a day; beta: only the last 5 days
        day_at = (today - back) * 86_400.0 + 3600
        tenants = [("acme", "key:a", 0.10 + 0.01 * (25 - back) + noise[back])]
        if back <= 5:
            tenants.append(("beta", "key:b", 0.05))
        for tenant, key, cost in tenants:
            n += 1
            store.record(
                RequestRecord(
                    request_id=f"{n:032x}", at=day_at, principal=key, tenant=tenant, question="q?", answer="a",
                    stack_name="s", stack_version=1 + back % 2, index_version=1, prompt_tokens=100,
                    completion_tokens=10, cost_usd=cost,
                )
            )  # fmt: skip
    store.flush()
    runner = CliRunner()
    result = runner.invoke(app, ["spend", "--by", "tenant", "--since", "30d", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    groups = {g["group"]: g for g in report["groups"]}
    assert groups["acme"]["requests"] == 25 and groups["beta"]["requests"] == 5
    assert groups["acme"]["cost_usd"] == pytest.approx(sum(0.10 + 0.01 * i for i in range(25)) + noise[1:].sum())
    assert groups["acme"]["prompt_tokens"] == 2500
    forecasts = {f["tenant"]: f for f in report["forecast"]}
    acme = forecasts["acme"]["forecast"]
    truth = sum(0.10 + 0.01 * (25 + i) for i in range(30))  # the line continued: 14.85 USD
    assert acme["lower"] <= truth <= acme["upper"] and acme["total"] == pytest.approx(truth, rel=0.05)
    assert forecasts["beta"]["forecast"] is None and forecasts["beta"]["history_days"] == 5

    import mlflow

    run = mlflow.get_run(report["mlflow_run_id"])
    assert run.data.metrics["next_30d_usd.acme"] == pytest.approx(acme["total"])

    by_key = runner.invoke(app, ["spend", "--by", "key", "--since", "7d", "--no-forecast"])
    assert by_key.exit_code == 0 and "key:a" in by_key.output and "key:b" in by_key.output
    assert runner.invoke(app, ["spend", "--by", "colour"]).exit_code == 2
    assert runner.invoke(app, ["spend", "--since", "last tuesday"]).exit_code == 2
