"""Fitting the router: on rows where the extractive tier is right exactly when its support is high, the fitted
router sends those questions to it, escalates nothing it need not, and keeps the top tier's quality for less."""

from __future__ import annotations

import random

import pytest

from evaluation.errors import EvaluationError
from evaluation.router_fit import Outcome, Row, fit, simulate, top_tier
from rag.routing import Features
from rag.types import RoutingConfig, TierConfig

LLM = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}


def _rows(n: int = 200) -> list[Row]:
    rng = random.Random(7)
    rows = []
    for i in range(n):
        support = rng.random()
        easy = support > 0.5
        rows.append(
            Row(
                f"q{i}",
                Features(1.0, 0.0, 0.7, 0.1, support, 0.0, 0.0, 0.5),
                (Outcome(easy, easy, 0.0), Outcome(True, True, 0.01)),
                unanswerable=False,
            )
        )
    return rows


def test_the_fitted_router_keeps_top_quality_at_a_fraction_of_its_cost() -> None:
    routing = RoutingConfig(tiers=(TierConfig(name="extractive"), TierConfig(name="large", kind="llm", llm=LLM)))
    rows = _rows()
    fitted = fit(routing, rows, tolerance=0.02, fitted_on="synthetic")
    assert fitted.tiers[0].coef is not None and fitted.tiers[1].coef is None
    assert fitted.tiers[0].coef[4] > 0  # support raises the extractive tier's chance
    routed, top = simulate(fitted, rows), top_tier(rows)
    assert routed.quality >= top.quality - 0.02
    assert routed.cost_usd <= 0.6 * top.cost_usd
    assert fitted.fitted_on == "synthetic" and routed.tier_shares["extractive"] > 0.4


def test_escalation_pays_for_both_tiers_and_is_counted() -> None:
    always_cheap = TierConfig(name="extractive", coef=(0.0,) * 8, intercept=9.0)
    routing = RoutingConfig(tiers=(always_cheap, TierConfig(name="large", kind="llm", llm=LLM)))
    row = Row(
        "q", Features(1, 0, 0.7, 0.1, 0.2, 0, 0, 0), (Outcome(False, False, 0.0), Outcome(True, True, 0.01)), False
    )
    sim = simulate(routing, [row])
    assert (sim.escalation_rate, sim.quality, sim.cost_usd) == (1.0, 1.0, pytest.approx(0.01))


def test_one_tier_cannot_be_fitted() -> None:
    with pytest.raises(EvaluationError, match="two tiers"):
        fit(RoutingConfig(tiers=(TierConfig(name="x"),)), _rows(4), tolerance=0.0, fitted_on="x")
