"""The deployment gate: minimums every stack must meet, and no regression against the champion beyond tolerance.

Two kinds of check, both reported metric by metric with the numbers:

* **Threshold.** ``thresholds`` maps a metric to its minimum, or, for latency, token and cost metrics (names ending
  in ``_ms`` or starting with ``tokens``/``cost``), to its maximum. A threshold on a metric the run could not
  measure fails: a gate that silently skips its checks is not a gate.
* **Regression.** Every quality metric both runs measured is compared with the champion's reference evaluation on
  the same test set hash. A drop larger than the metric's tolerance fails. The paired test (per-example scores,
  :mod:`evaluation.significance`) is reported beside it, so a reader can tell a real drop from noise; it does not
  excuse a drop beyond tolerance.

Operational metrics (latency, tokens) are never regression-checked: they vary with the machine's load, not the stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from evaluation.metrics import PerQuery
from evaluation.significance import PairedComparison, compare

if TYPE_CHECKING:
    from evaluation.runner import EvalResult
    from evaluation.settings import EvalSettings


def lower_is_better(metric: str) -> bool:
    """Latency, token and cost metrics, guardrail trigger/false-refusal rates and a tiered stack's escalation rate
    and tier shares: smaller is better or descriptive (maxima only, never a regression)."""
    return (
        metric.endswith("_ms")
        or metric.startswith(("tokens", "cost", "tier_share_"))
        or metric in ("guardrail_trigger_rate", "guardrail_false_refusal_rate", "escalation_rate")
    )


@dataclass(frozen=True)
class Baseline:
    """The champion's reference evaluation on the same test set hash."""

    version: int
    run_id: str
    metrics: Mapping[str, float]
    per_query: PerQuery


@dataclass(frozen=True)
class MetricCheck:
    """One check of the gate."""

    metric: str
    kind: str  # "threshold" | "regression"
    value: float | None
    passed: bool
    reason: str
    threshold: float | None = None
    baseline: float | None = None
    delta: float | None = None
    tolerance: float | None = None
    p_value: float | None = None


@dataclass(frozen=True)
class GateReport:
    """Whether a stack may become champion, and why (every check, failed ones first in :meth:`summary`)."""

    passed: bool
    testset_sha256: str
    checks: tuple[MetricCheck, ...]
    baseline_version: int | None = None
    baseline_run_id: str | None = None
    comparisons: tuple[PairedComparison, ...] = field(default_factory=tuple)

    @property
    def failures(self) -> tuple[MetricCheck, ...]:
        """The checks that failed."""
        return tuple(c for c in self.checks if not c.passed)

    def summary(self) -> str:
        """One line per failed check (or a pass line), for logs, CLI output and alerts."""
        if self.passed:
            against = f" and no regression against champion v{self.baseline_version}" if self.baseline_version else ""
            return f"gate passed: {len(self.checks)} checks, every threshold met{against}"
        lines = [f"gate failed: {len(self.failures)} of {len(self.checks)} checks"]
        lines += [f"  {c.metric}: {c.reason}" for c in self.failures]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (the ``gate.json`` artifact and ``--json`` output)."""
        return {
            "passed": self.passed,
            "testset_sha256": self.testset_sha256,
            "baseline_version": self.baseline_version,
            "baseline_run_id": self.baseline_run_id,
            "failures": [c.metric for c in self.failures],
            "checks": [asdict(c) for c in self.checks],
            "comparisons": [asdict(c) for c in self.comparisons],
        }


def _threshold_checks(metrics: Mapping[str, float], thresholds: Mapping[str, float]) -> list[MetricCheck]:
    checks: list[MetricCheck] = []
    for metric, limit in sorted(thresholds.items()):
        value = metrics.get(metric)
        if value is None:
            checks.append(MetricCheck(metric, "threshold", None, False, "not measured by this run", threshold=limit))
            continue
        if lower_is_better(metric):
            ok = value <= limit
            reason = f"{value:.4g} {'<=' if ok else '>'} maximum {limit:.4g}"
            if not ok:
                reason += f" (over by {value - limit:.4g})"
        else:
            ok = value >= limit
            reason = f"{value:.4f} {'>=' if ok else '<'} minimum {limit:.4f}"
            if not ok:
                reason += f" (short by {limit - value:.4f})"
        checks.append(MetricCheck(metric, "threshold", value, ok, reason, threshold=limit))
    return checks


def _regression_checks(
    result: EvalResult, baseline: Baseline, settings: EvalSettings, comparisons: Sequence[PairedComparison]
) -> list[MetricCheck]:
    by_metric = {c.metric: c for c in comparisons}
    checks: list[MetricCheck] = []
    for metric in sorted(set(result.metrics) & set(baseline.metrics)):
        if lower_is_better(metric):
            continue
        value, before = result.metrics[metric], baseline.metrics[metric]
        delta = value - before
        tolerance = settings.tolerances.get(metric, settings.tolerance)
        paired = by_metric.get(metric)
        p_value = paired.p_value if paired is not None else None
        ok = delta >= -tolerance
        noise = f", p={p_value:.3g}" if p_value is not None else ""
        reason = f"{value:.4f} vs champion {before:.4f} ({delta:+.4f}, tolerance {tolerance:.4f}{noise})"
        if not ok:
            reason = f"regressed by {-delta:.4f} beyond tolerance {tolerance:.4f}: " + reason
        checks.append(
            MetricCheck(
                metric,
                "regression",
                value,
                ok,
                reason,
                baseline=before,
                delta=delta,
                tolerance=tolerance,
                p_value=p_value,
            )
        )
    return checks


def run_gate(result: EvalResult, settings: EvalSettings, *, baseline: Baseline | None) -> GateReport:
    """Check ``result`` against the thresholds and, when there is a champion, against its reference evaluation."""
    checks = _threshold_checks(result.metrics, settings.thresholds)
    comparisons: list[PairedComparison] = []
    if baseline is not None:
        shared = {
            m: v
            for m, v in result.per_query.values.items()
            if m in baseline.per_query.values and not lower_is_better(m)
        }
        base = {m: baseline.per_query.values[m] for m in shared}
        try:
            comparisons = compare(PerQuery(values=base), PerQuery(values=shared), n_resamples=settings.resamples)
        except ValueError:
            comparisons = []  # fewer than two shared examples: deltas are still checked, without p-values
        checks += _regression_checks(result, baseline, settings, comparisons)
    return GateReport(
        passed=all(c.passed for c in checks),
        testset_sha256=result.testset_sha256,
        checks=tuple(checks),
        baseline_version=baseline.version if baseline else None,
        baseline_run_id=baseline.run_id if baseline else None,
        comparisons=tuple(comparisons),
    )
