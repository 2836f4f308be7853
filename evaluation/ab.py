"""Reading an online A/B experiment: per-arm figures from the request store and always-valid significance tests.

The monitor flow looks at a running experiment every time it runs, so the test must stay valid when it is looked
at again and again (a fixed-horizon test checked at every run finds a "difference" between identical arms far more
often than its level says). Each comparison is a **mixture sequential probability ratio test** (mSPRT; Johari,
Pekelis and Walsh, "Always valid inference", 2017, the test behind Optimizely's stats engine): for a difference
estimate ``d`` with variance ``V`` and a normal mixing distribution ``N(0, tau^2)`` over the true difference,

    Lambda = sqrt(V / (V + tau^2)) * exp(d^2 * tau^2 / (2 V (V + tau^2)))

is a likelihood ratio whose running value stays below ``1/alpha`` for ever with probability at least ``1 - alpha``
under "no difference" (Ville's inequality), so ``p = min(1, 1/Lambda)`` is a p-value that may be read at any time.
``tau`` is the size of difference the test is tuned to find: 0.1 for rates (thumbs-up, abstention, guardrail
triggers), a fifth of the champion's mean for latency and cost.

The verdict reads the **thumbs-up rate** (users' judgement of the answers) at ``alpha``; abstention, guardrail
triggers, latency and cost are guard metrics, each tested at ``alpha / 4`` (Bonferroni), and a challenger
significantly worse on any of them is worse. A verdict needs ``min_samples`` per arm (the normal approximation's
floor); before that the experiment is ``collecting``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from rag.experiment import ARMS, STATUS_TAG, Arm, Experiment

if TYPE_CHECKING:
    from evaluation.settings import EvaluationSettings
    from rag.stack import StackRegistry
    from rag.store import RequestStore
    from rag.store.records import WindowStats

logger = logging.getLogger(__name__)

Verdict = Literal["collecting", "no_difference", "challenger_worse", "challenger_better"]
DECIDED: frozenset[str] = frozenset({"challenger_worse", "challenger_better"})
RATE_TAU = 0.1
RELATIVE_TAU = 0.2
MIN_SAMPLES = 30
GUARD_METRICS = 4


@dataclass(frozen=True)
class ArmFigures:
    """One arm over the experiment so far."""

    arm: Arm
    stack_version: int
    requests: int
    callers: int
    rated: int
    thumbs_up: int
    abstained: int
    guardrail_triggered: int
    mean_total_ms: float | None
    sd_total_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    cost_per_request: float
    cost_sd_usd: float

    @property
    def thumbs_up_rate(self) -> float | None:
        """Of the rated answers, the share rated up (None before any rating)."""
        return self.thumbs_up / self.rated if self.rated else None

    @classmethod
    def of(cls, arm: Arm, version: int, stats: WindowStats, callers: int) -> ArmFigures:
        """The figures of ``arm`` from its window of the request store."""
        return cls(
            arm=arm,
            stack_version=version,
            requests=stats.requests,
            callers=callers,
            rated=stats.feedback_up + stats.feedback_down,
            thumbs_up=stats.feedback_up,
            abstained=stats.abstained,
            guardrail_triggered=stats.guardrail_triggered,
            mean_total_ms=stats.mean_total_ms,
            sd_total_ms=stats.sd_total_ms,
            p50_ms=stats.p50_ms,
            p95_ms=stats.p95_ms,
            cost_per_request=stats.cost_per_request,
            cost_sd_usd=stats.cost_sd_usd,
        )


@dataclass(frozen=True)
class MetricTest:
    """One metric compared between the arms. ``difference`` is challenger minus champion; ``worse`` says which
    direction hurts (``higher`` for abstention, triggers, latency, cost; ``lower`` for thumbs-up)."""

    metric: str
    champion: float | None
    challenger: float | None
    difference: float | None
    p_value: float
    alpha: float
    worse: Literal["higher", "lower"]
    tested: bool

    @property
    def significant(self) -> bool:
        """The arms differ at this test's level."""
        return self.tested and self.p_value <= self.alpha

    @property
    def challenger_worse(self) -> bool:
        """The challenger is significantly worse on this metric."""
        if not self.significant or self.difference is None:
            return False
        return self.difference > 0 if self.worse == "higher" else self.difference < 0


@dataclass(frozen=True)
class ExperimentReport:
    """What the experiment shows at ``at``: both arms, every test, the verdict and the stickiness check."""

    experiment: Experiment
    at: float
    champion: ArmFigures
    challenger: ArmFigures
    tests: tuple[MetricTest, ...]
    verdict: Verdict
    sticky_violations: int

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (the CLI's ``--json`` and the tag written on the challenger)."""
        return {
            "experiment": asdict(self.experiment),
            "at": self.at,
            "verdict": self.verdict,
            "sticky_violations": self.sticky_violations,
            "arms": {
                a.arm: {**asdict(a), "thumbs_up_rate": a.thumbs_up_rate} for a in (self.champion, self.challenger)
            },
            "tests": [
                {**asdict(t), "significant": t.significant, "challenger_worse": t.challenger_worse} for t in self.tests
            ],
        }

    def tag(self) -> str:
        """The compact JSON recorded on the candidate (model-version tags hold at most 5,000 characters)."""
        return json.dumps(
            {
                "experiment": self.experiment.id,
                "verdict": self.verdict,
                "at": round(self.at, 3),
                "requests": {"champion": self.champion.requests, "challenger": self.challenger.requests},
                "rated": {"champion": self.champion.rated, "challenger": self.challenger.rated},
                "p": {t.metric: round(t.p_value, 6) for t in self.tests},
                "difference": {t.metric: t.difference for t in self.tests},
            },
            sort_keys=True,
        )


def always_valid_p(difference: float, variance: float, tau: float) -> float:
    """The mSPRT p-value of a difference estimate with variance ``variance`` (see the module docstring)."""
    if variance <= 0.0:
        return 1.0 if difference == 0.0 else 0.0
    t2 = tau * tau
    log_lambda = 0.5 * math.log(variance / (variance + t2)) + difference * difference * t2 / (
        2.0 * variance * (variance + t2)
    )
    return 1.0 if log_lambda <= 0.0 else math.exp(-log_lambda)


def compare_rates(
    metric: str, hits: tuple[int, int], totals: tuple[int, int], *, alpha: float, worse: Literal["higher", "lower"]
) -> MetricTest:
    """Two proportions (champion, challenger) with the pooled variance of their difference."""
    (a, b), (n_a, n_b) = hits, totals
    rate_a = a / n_a if n_a else None
    rate_b = b / n_b if n_b else None
    if rate_a is None or rate_b is None or min(n_a, n_b) < MIN_SAMPLES:
        return MetricTest(metric, rate_a, rate_b, None, 1.0, alpha, worse, tested=False)
    pooled = (a + b) / (n_a + n_b)
    variance = pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b)
    diff = rate_b - rate_a
    return MetricTest(metric, rate_a, rate_b, diff, always_valid_p(diff, variance, RATE_TAU), alpha, worse, True)


def compare_means(
    metric: str,
    means: tuple[float | None, float | None],
    sds: tuple[float | None, float | None],
    counts: tuple[int, int],
    *,
    alpha: float,
) -> MetricTest:
    """Two means (champion, challenger) with the unpooled (Welch) variance of their difference; higher is worse."""
    (m_a, m_b), (s_a, s_b), (n_a, n_b) = means, sds, counts
    if m_a is None or m_b is None or s_a is None or s_b is None or min(n_a, n_b) < MIN_SAMPLES or m_a <= 0.0:
        return MetricTest(metric, m_a, m_b, None, 1.0, alpha, "higher", tested=False)
    variance = s_a * s_a / n_a + s_b * s_b / n_b
    diff = m_b - m_a
    p = always_valid_p(diff, variance, RELATIVE_TAU * m_a)
    return MetricTest(metric, m_a, m_b, diff, p, alpha, "higher", True)


def decide(tests: tuple[MetricTest, ...], primary: MetricTest) -> Verdict:
    """The verdict from the primary test and the guard metrics (see the module docstring)."""
    if not primary.tested:
        return "collecting"
    if primary.challenger_worse or any(t.challenger_worse for t in tests if t is not primary):
        return "challenger_worse"
    if primary.significant:
        return "challenger_better"
    return "no_difference"


def analyse(store: RequestStore, experiment: Experiment, *, now: float, settle_s: float = 0.0) -> ExperimentReport:
    """The experiment's report from the request store's records since it started.

    ``settle_s``: how long after the start the records count. A replica of the service picks an experiment up at
    its next registry check, so until every replica has had one reload interval the challenger's callers may
    still be answered by the champion; those records belong to neither arm.
    """
    since = min(experiment.started_at + settle_s, now)
    callers, violations = store.arm_callers(since, now, (experiment.champion, experiment.challenger))
    arms = {
        arm: ArmFigures.of(
            arm,
            experiment.version(arm),
            store.window(since, now, stack_version=experiment.version(arm)),
            callers.get(experiment.version(arm), 0),
        )
        for arm in ARMS
    }
    a, b = arms["champion"], arms["challenger"]
    guard = experiment.alpha / GUARD_METRICS
    primary = compare_rates(
        "thumbs_up_rate", (a.thumbs_up, b.thumbs_up), (a.rated, b.rated), alpha=experiment.alpha, worse="lower"
    )
    tests = (
        primary,
        compare_rates(
            "abstention_rate", (a.abstained, b.abstained), (a.requests, b.requests), alpha=guard, worse="higher"
        ),
        compare_rates(
            "guardrail_trigger_rate",
            (a.guardrail_triggered, b.guardrail_triggered),
            (a.requests, b.requests),
            alpha=guard,
            worse="higher",
        ),
        compare_means(
            "latency_ms",
            (a.mean_total_ms, b.mean_total_ms),
            (a.sd_total_ms, b.sd_total_ms),
            (a.requests, b.requests),
            alpha=guard,
        ),
        compare_means(
            "cost_usd",
            (a.cost_per_request, b.cost_per_request),
            (a.cost_sd_usd, b.cost_sd_usd),
            (a.requests, b.requests),
            alpha=guard,
        ),
    )
    return ExperimentReport(
        experiment=experiment,
        at=now,
        champion=a,
        challenger=b,
        tests=tests,
        verdict=decide(tests, primary),
        sticky_violations=violations,
    )


def _report(settings: EvaluationSettings, experiment: Experiment, now: float | None) -> ExperimentReport:
    from evaluation.monitor import open_store

    with open_store(settings) as store:
        return analyse(store, experiment, now=time.time() if now is None else now, settle_s=settle_seconds(settings))


SETTLE_LOAD_S = 5.0
"""Allowance for a replica to open the challenger's engine once it has seen the experiment."""


def settle_seconds(settings: EvaluationSettings) -> float:
    """How long after its start an experiment's records count: two of the service's reload intervals plus the
    time to load the challenger (bench/review.py once saw a caller on both arms with two intervals alone)."""
    return 2.0 * settings.service.reload_interval_s + SETTLE_LOAD_S


def record_report(registry: StackRegistry, report: ExperimentReport) -> str:
    """Write the report on the candidate (its challenger version) and return the status recorded.

    A decision is final: the sequential test allows stopping at the first crossing of its threshold, so once a
    look has found the challenger worse (or better) that status stays on the candidate even if a later look's
    p-value rises again; the latest figures are still written beside it.
    """
    experiment = report.experiment
    tags = registry.get(experiment.challenger).tags
    previous = tags.get(STATUS_TAG)
    same = tags.get("ab_experiment_id") == experiment.id
    status = previous if same and previous in DECIDED else report.verdict
    registry.record_experiment(experiment, status=str(status), result=report.tag())
    if status != previous:
        logger.info(
            "experiment %s: %s (v%s against v%s)", experiment.id, status, experiment.challenger, experiment.champion
        )
    return str(status)


def check_experiment(
    settings: EvaluationSettings, *, registry: StackRegistry | None = None, now: float | None = None
) -> tuple[ExperimentReport, str] | None:
    """Analyse the running experiment and record its status on the candidate (the monitor flow's step); None
    when no experiment runs."""
    from rag.stack import StackRegistry

    registry = registry or StackRegistry(settings)
    experiment = registry.experiment()
    if experiment is None:
        return None
    report = _report(settings, experiment, now)
    return report, record_report(registry, report)


def stop_experiment(
    settings: EvaluationSettings, *, actor: str, registry: StackRegistry | None = None, now: float | None = None
) -> tuple[ExperimentReport, str]:
    """Stop the running experiment after recording its final report on the candidate.

    Raises:
        StackNotFound: No experiment is running.
    """
    from rag.errors import StackNotFound
    from rag.stack import StackRegistry

    registry = registry or StackRegistry(settings)
    experiment = registry.experiment()
    if experiment is None:
        raise StackNotFound("no experiment is running")
    report = _report(settings, experiment, now)
    status = record_report(registry, report)
    registry.stop_experiment(actor=actor)
    return report, status
