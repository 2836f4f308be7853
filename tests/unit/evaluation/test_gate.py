"""The gate's decisions on constructed results: thresholds (minima and maxima), regressions, operational metrics."""

from __future__ import annotations

from collections.abc import Mapping

from evaluation.gate import Baseline, lower_is_better, run_gate
from evaluation.metrics import PerQuery
from evaluation.runner import EvalResult
from evaluation.settings import EvalSettings


def _result(metrics: Mapping[str, float], per_query: Mapping[str, Mapping[str, float]] | None = None) -> EvalResult:
    return EvalResult(
        testset_name="t",
        testset_sha256="f" * 64,
        testset_kind="qa",
        stack_name="s",
        stack_fingerprint="0" * 64,
        stack_version=2,
        index_version=1,
        metrics=dict(metrics),
        per_query=PerQuery(values={k: dict(v) for k, v in (per_query or {}).items()}),
        examples=(),
    )


def _scores(n: int, hits: int) -> dict[str, float]:
    return {f"q{i}": 1.0 if i < hits else 0.0 for i in range(n)}


def test_thresholds_pass_and_fail_with_the_shortfall() -> None:
    settings = EvalSettings(thresholds={"recall@10": 0.9, "latency_total_p95_ms": 50.0})
    ok = run_gate(_result({"recall@10": 0.95, "latency_total_p95_ms": 20.0}), settings, baseline=None)
    assert ok.passed and not ok.failures and "gate passed" in ok.summary()
    bad = run_gate(_result({"recall@10": 0.85, "latency_total_p95_ms": 80.0}), settings, baseline=None)
    assert not bad.passed
    reasons = {c.metric: c.reason for c in bad.failures}
    assert "short by 0.0500" in reasons["recall@10"]
    assert "over by 30" in reasons["latency_total_p95_ms"]  # a latency threshold is a maximum
    assert "recall@10" in bad.summary() and "latency_total_p95_ms" in bad.summary()


def test_a_threshold_on_an_unmeasured_metric_fails() -> None:
    report = run_gate(_result({"recall@10": 1.0}), EvalSettings(thresholds={"containment": 0.5}), baseline=None)
    assert not report.passed and report.failures[0].reason == "not measured by this run"


def test_regression_beyond_tolerance_fails_with_a_p_value() -> None:
    settings = EvalSettings(thresholds={}, tolerance=0.02, resamples=999)
    before = _scores(100, 90)
    after = _scores(100, 60)
    baseline = Baseline(version=1, run_id="r1", metrics={"recall@10": 0.9}, per_query=PerQuery({"recall@10": before}))
    report = run_gate(_result({"recall@10": 0.6}, {"recall@10": after}), settings, baseline=baseline)
    assert not report.passed and report.baseline_version == 1
    check = report.failures[0]
    assert check.kind == "regression" and check.delta is not None and abs(check.delta + 0.3) < 1e-9
    assert check.p_value is not None and check.p_value < 0.01
    assert "regressed by 0.3000 beyond tolerance 0.0200" in check.reason


def test_small_drop_within_tolerance_passes_and_per_metric_tolerance_applies() -> None:
    before, after = _scores(100, 90), _scores(100, 89)
    baseline = Baseline(version=1, run_id="r1", metrics={"mrr@10": 0.9}, per_query=PerQuery({"mrr@10": before}))
    result = _result({"mrr@10": 0.89}, {"mrr@10": after})
    assert run_gate(result, EvalSettings(thresholds={}, resamples=999), baseline=baseline).passed
    strict = EvalSettings(thresholds={}, tolerances={"mrr@10": 0.0}, resamples=999)
    assert not run_gate(result, strict, baseline=baseline).passed


def test_operational_metrics_are_never_regression_checked() -> None:
    assert lower_is_better("latency_total_p50_ms") and lower_is_better("tokens_per_request")
    assert not lower_is_better("ndcg@10")
    baseline = Baseline(version=1, run_id="r1", metrics={"latency_total_p50_ms": 5.0}, per_query=PerQuery({}))
    report = run_gate(_result({"latency_total_p50_ms": 500.0}), EvalSettings(thresholds={}), baseline=baseline)
    assert report.passed and not report.checks
