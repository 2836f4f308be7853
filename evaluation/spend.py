"""Spend per tenant: the ledger's daily cost and a forecast of the next 30 days with an interval, logged to MLflow.

Why statsmodels' ETS (``ETSModel``, additive error and trend) rather than a hand-made trend line: it is a
maintained state-space implementation whose fitted model simulates future paths, so the interval of the 30-day
*total* comes from summed simulated paths (summing daily intervals would overstate it), and a level shift or a trend
is estimated by maximum likelihood instead of eyeballed. It is light next to the alternatives (statsforecast pulls
numba; prophet needs a Stan backend). Days without requests count as zero cost, and a tenant needs
:data:`MIN_HISTORY_DAYS` of history before it gets a forecast at all: a month projected from a week is a guess.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from evaluation.settings import EvaluationSettings
    from rag.store.ledger import DailySpend

logger = logging.getLogger(__name__)

HORIZON_DAYS = 30
MIN_HISTORY_DAYS = 14
LEVEL = 0.8
"""The interval's coverage: 80%, the usual planning band (95% bands over a month are too wide to act on)."""
EXPERIMENT = "spend"


@dataclass(frozen=True)
class Forecast:
    """The next ``horizon`` days' total cost with its interval, and the per-day mean path."""

    total: float
    lower: float
    upper: float
    level: float
    daily_mean: tuple[float, ...]
    trend_per_day: float
    """The fitted trend at the end of the history (cost per day, per day)."""


@dataclass(frozen=True)
class TenantForecast:
    """One tenant's history summary and forecast (``forecast`` is None with too little history)."""

    tenant: str
    history_days: int
    last_30d_usd: float
    forecast: Forecast | None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``ragops spend --json`` and the MLflow artifact."""
        out = asdict(self)
        if self.forecast is not None:
            out["forecast"]["daily_mean"] = [round(v, 6) for v in self.forecast.daily_mean]
        return out


def forecast_daily(
    values: Sequence[float], *, horizon: int = HORIZON_DAYS, level: float = LEVEL, paths: int = 2000, seed: int = 0
) -> Forecast:
    """Fit ETS (additive error and trend) to a daily series and forecast the next ``horizon`` days' total.

    Raises:
        ValueError: Fewer than :data:`MIN_HISTORY_DAYS` values.
    """
    if len(values) < MIN_HISTORY_DAYS:
        raise ValueError(f"a forecast needs at least {MIN_HISTORY_DAYS} days of history, got {len(values)}")
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    series = np.asarray(values, dtype=float)
    if float(np.ptp(series)) == 0.0:  # a flat series (often all zero) has nothing to fit: it stays flat
        flat = float(series[-1])
        return Forecast(flat * horizon, flat * horizon, flat * horizon, level, (flat,) * horizon, 0.0)
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    model = ETSModel(series, error="add", trend="add", damped_trend=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        fit = model.fit(disp=False)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):  # common on near-perfect lines; still usable
        logger.info("spend forecast: ETS fit did not fully converge", extra={"days": len(series)})
    mean = np.clip(np.asarray(fit.forecast(horizon)), 0.0, None)  # cost is never negative
    simulated = np.asarray(
        fit.simulate(nsimulations=horizon, repetitions=paths, anchor="end", rng=np.random.default_rng(seed))
    )
    totals = np.clip(simulated, 0.0, None).sum(axis=0)
    tail = (1.0 - level) / 2
    lower, upper = np.quantile(totals, [tail, 1.0 - tail])
    trend = float(np.asarray(fit.states)[-1, 1])  # the states are (level, trend) per day
    return Forecast(float(mean.sum()), float(lower), float(upper), level, tuple(float(v) for v in mean), trend)


def daily_series(rows: Sequence[DailySpend], first_day: int, last_day: int) -> dict[str, list[float]]:
    """Cost per tenant for every day in ``[first_day, last_day]``, zeros where a tenant had no requests."""
    series: dict[str, list[float]] = {}
    for row in rows:
        if first_day <= row.day <= last_day:
            days = series.setdefault(row.tenant, [0.0] * (last_day - first_day + 1))
            days[row.day - first_day] += row.cost_usd
    return series


def forecast_tenants(
    rows: Sequence[DailySpend], first_day: int, last_day: int, *, horizon: int = HORIZON_DAYS
) -> list[TenantForecast]:
    """A forecast per tenant from its first day with requests to ``last_day`` (most expensive tenant first)."""
    out = []
    for tenant, days in daily_series(rows, first_day, last_day).items():
        start = next((i for i, v in enumerate(days) if v > 0), len(days))
        history = days[start:]
        forecast = forecast_daily(history, horizon=horizon) if len(history) >= MIN_HISTORY_DAYS else None
        out.append(TenantForecast(tenant, len(history), float(sum(days[-30:])), forecast))
    return sorted(out, key=lambda f: (-(f.forecast.total if f.forecast else f.last_30d_usd), f.tenant))


def _metric_name(tenant: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", tenant)[:200]


def log_forecasts(settings: EvaluationSettings, forecasts: Sequence[TenantForecast], *, until: float) -> str:
    """Log the forecasts as one run of the ``spend`` experiment (per-tenant metrics, all of it as JSON); its id."""
    from pipelines.tracking import configure_mlflow, ensure_experiment

    mlflow = configure_mlflow(settings)
    experiment_id = ensure_experiment(settings, EXPERIMENT)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"spend forecast to {until:.0f}") as run:
        mlflow.set_tags({"ragops.kind": "spend_forecast"})
        mlflow.log_params({"horizon_days": HORIZON_DAYS, "level": LEVEL, "model": "statsmodels ETS(A,A,N)"})
        metrics: dict[str, float] = {}
        for item in forecasts:
            name = _metric_name(item.tenant)
            metrics[f"last_30d_usd.{name}"] = item.last_30d_usd
            if item.forecast is not None:
                metrics[f"next_30d_usd.{name}"] = item.forecast.total
                metrics[f"next_30d_lower_usd.{name}"] = item.forecast.lower
                metrics[f"next_30d_upper_usd.{name}"] = item.forecast.upper
        mlflow.log_metrics(metrics)
        mlflow.log_dict({"forecasts": [f.to_json() for f in forecasts]}, "spend_forecast.json")
        return str(run.info.run_id)
