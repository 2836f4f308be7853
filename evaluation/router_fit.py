"""Fitting a tiered stack's router on an evaluation set, and what routing costs and keeps on it.

Why fit rather than hand-tune: whether the extractive answer or the small LLM will do depends on the corpus and the
questions; the evaluation set says, per question, which tier answered correctly and passed its output check. Each
tier evaluated alone (:func:`single_tier`: the chain of a one-tier stack, so its route stage still records the
features) gives one :class:`Row` per question; a logistic regression per tier (scikit-learn) predicts "passes and is
correct" from the features; then the threshold is the one with the lowest simulated cost whose quality stays within
``tolerance`` of always using the top tier (:func:`simulate` replays the routing and escalation on the rows). The
result is a new :class:`rag.types.RoutingConfig`, registered as a new stack version like any other change.

Correct means: an unanswerable question abstained; an answerable one did not abstain and contains a reference
(the gate's ``containment``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from evaluation.errors import EvaluationError
from evaluation.runner import EvalResult, ExampleResult
from rag.routing import Features, decide
from rag.types import ROUTER_FEATURES, RoutingConfig, StackConfig

if TYPE_CHECKING:
    from evaluation.settings import EvaluationSettings
    from evaluation.testsets import TestSet
    from rag.stack import StackRegistry

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(2, 20))
"""Candidate routing thresholds (0.10 .. 0.95)."""


@dataclass(frozen=True)
class Outcome:
    """One tier on one question: its output check, whether it was right, what it cost."""

    passed: bool
    correct: bool
    cost_usd: float
    abstained: bool = False


@dataclass(frozen=True)
class Row:
    """One question: the router's features and every tier's outcome (cheapest tier first)."""

    id: str
    features: Features
    outcomes: tuple[Outcome, ...]
    unanswerable: bool


@dataclass(frozen=True)
class Simulation:
    """The routed stack replayed on the rows: quality (share correct), cost, escalations, who answered."""

    quality: float
    cost_usd: float
    escalation_rate: float
    abstention_recall: float | None
    false_abstention_rate: float | None
    tier_shares: Mapping[str, float]


def correct(example: ExampleResult) -> bool:
    """The answer is right: an abstention on an unanswerable question, else a non-abstaining answer holding a
    reference."""
    if example.unanswerable:
        return example.abstained
    return not example.abstained and example.scores.get("containment", 0.0) >= 1.0


def single_tier(config: StackConfig, name: str) -> StackConfig:
    """``config`` answering with its tier ``name`` only (no routing choice, no escalation): one column of the fit."""
    if config.routing is None:
        raise EvaluationError(f"stack {config.name!r} has no tiers")
    tiers = [t for t in config.routing.tiers if t.name == name]
    if not tiers:
        raise EvaluationError(f"stack {config.name!r} has no tier {name!r}")
    only = tiers[0].model_copy(update={"coef": None})
    routing = config.routing.model_copy(update={"tiers": (only,), "max_escalations": 0})
    return config.model_copy(update={"routing": routing, "name": f"{config.name}-{name}"[:64]})


def rows_from(per_tier: Sequence[EvalResult]) -> list[Row]:
    """Join the one-tier evaluations (cheapest tier first) question by question."""
    if not per_tier:
        raise EvaluationError("no tier was evaluated")
    by_tier = [{e.id: e for e in result.examples} for result in per_tier]
    rows: list[Row] = []
    for example in per_tier[0].examples:
        trace = example.routing
        if trace is None:  # refused before routing (a guardrail): nothing for the router to learn
            continue
        feats = trace["features"]
        outcomes = []
        for table in by_tier:
            other = table[example.id]
            attempts = (other.routing or {}).get("attempts") or [{}]
            outcomes.append(Outcome(bool(attempts[0].get("passed")), correct(other), other.cost_usd, other.abstained))
        rows.append(
            Row(
                example.id,
                Features(**{name: float(feats[name]) for name in ROUTER_FEATURES}),
                tuple(outcomes),
                example.unanswerable,
            )
        )
    if not rows:
        raise EvaluationError(f"{per_tier[0].stack_name!r} routed no question (not a tiered stack?)")
    return rows


def simulate(routing: RoutingConfig, rows: Sequence[Row]) -> Simulation:
    """Replay routing and escalation: start at the routed tier, go up while the output check fails (paying each
    try), keep the last answer."""
    if not rows:
        raise EvaluationError("no rows to simulate")
    names = [t.name for t in routing.tiers]
    right = cost = escalated = 0.0
    shares = dict.fromkeys(names, 0.0)
    picked: list[tuple[Row, Outcome]] = []
    for row in rows:
        start = decide(routing, row.features).tier
        last = min(len(names) - 1, start + routing.max_escalations)
        used = start
        for i in range(start, last + 1):
            used = i
            cost += row.outcomes[i].cost_usd
            if row.outcomes[i].passed:
                break
        escalated += used > start
        shares[names[used]] += 1 / len(rows)
        right += row.outcomes[used].correct
        picked.append((row, row.outcomes[used]))
    recall, false_rate = _abstention(picked)
    return Simulation(right / len(rows), cost, escalated / len(rows), recall, false_rate, shares)


def _abstention(picked: Sequence[tuple[Row, Outcome]]) -> tuple[float | None, float | None]:
    """Abstention recall on the unanswerable questions and the false abstention rate on the answerable ones."""
    unanswerable = [o.abstained for r, o in picked if r.unanswerable]
    answerable = [o.abstained for r, o in picked if not r.unanswerable]
    recall = sum(unanswerable) / len(unanswerable) if unanswerable else None
    return recall, (sum(answerable) / len(answerable) if answerable else None)


def top_tier(rows: Sequence[Row]) -> Simulation:
    """Always the most capable tier (the baseline routing is measured against)."""
    if not rows:
        raise EvaluationError("no rows to simulate")
    recall, false_rate = _abstention([(r, r.outcomes[-1]) for r in rows])
    quality = sum(r.outcomes[-1].correct for r in rows) / len(rows)
    return Simulation(quality, sum(r.outcomes[-1].cost_usd for r in rows), 0.0, recall, false_rate, {})


def _logistic(rows: Sequence[Row], tier: int) -> tuple[tuple[float, ...], float]:
    """Coefficients and intercept of P(tier passes its check and is right | features)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.array([r.features.vector() for r in rows])
    y = np.array([r.outcomes[tier].passed and r.outcomes[tier].correct for r in rows], dtype=int)
    if y.min() == y.max():  # one class only: the tier always (or never) does
        return (0.0,) * len(ROUTER_FEATURES), 6.0 if y[0] else -6.0
    model = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
    return tuple(float(c) for c in model.coef_[0]), float(model.intercept_[0])


def fit(routing: RoutingConfig, rows: Sequence[Row], *, tolerance: float, fitted_on: str) -> RoutingConfig:
    """``routing`` with fitted coefficients for every tier but the last, and the cheapest threshold whose quality
    stays within ``tolerance`` of the top tier's (else the best-quality threshold)."""
    if len(routing.tiers) < 2:
        raise EvaluationError("routing needs at least two tiers to fit")
    tiers = list(routing.tiers)
    for i in range(len(tiers) - 1):
        coef, intercept = _logistic(rows, i)
        tiers[i] = tiers[i].model_copy(update={"coef": coef, "intercept": intercept})
    tiers[-1] = tiers[-1].model_copy(update={"coef": None, "intercept": 0.0})
    candidate = routing.model_copy(update={"tiers": tuple(tiers), "fitted_on": fitted_on})
    floor = top_tier(rows).quality - tolerance
    scored = [(t, simulate(candidate.model_copy(update={"threshold": t}), rows)) for t in THRESHOLDS]
    within = [(s.cost_usd, -s.quality, t) for t, s in scored if s.quality >= floor]
    best = max(scored, key=lambda ts: (ts[1].quality, -ts[1].cost_usd))[0]
    threshold = min(within)[2] if within else best
    return candidate.model_copy(update={"threshold": threshold})


@dataclass(frozen=True)
class FitReport:
    """What :func:`fit_stack` did: the new stack version, its routing, and routed vs top tier on the rows."""

    version: int
    routing: RoutingConfig
    routed: Simulation
    top: Simulation
    rows: int


def fit_stack(
    settings: EvaluationSettings, registry: StackRegistry, version: int, testset: TestSet, *, actor: str
) -> FitReport:
    """Evaluate each tier of stack ``version`` alone on ``testset``, fit its router and register the result as a
    new stack version (not promoted: it goes through the gate like any other change)."""
    from evaluation.runner import evaluate
    from rag.engine import RagEngine

    config = registry.get(version).config
    if config.routing is None:
        raise EvaluationError(f"stack version {version} has no tiers (routing); nothing to fit")
    results = []
    for tier in config.routing.tiers:
        with RagEngine.open(settings, single_tier(config, tier.name)) as engine:
            results.append(evaluate(engine, testset, settings.eval))
    rows = rows_from(results)
    fitted_on = f"{testset.name}@{testset.sha256[:12]}; success = containment or right abstention"
    routing = fit(config.routing, rows, tolerance=settings.eval.tolerance, fitted_on=fitted_on)
    new = registry.register(
        config.model_copy(update={"routing": routing}),
        description=f"router fitted on {testset.name} from version {version}",
        actor=actor,
        tags={"router.fitted_on": fitted_on, "router.fitted_from": str(version)},
    )
    return FitReport(new, routing, simulate(routing, rows), top_tier(rows), len(rows))
