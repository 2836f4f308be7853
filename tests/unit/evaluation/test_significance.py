"""Paired significance tests: real improvements are detected, noise and identical systems are not."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from evaluation.metrics import PerQuery
from evaluation.significance import PairedComparison, compare, paired_test


def scores(values: np.ndarray | list[float]) -> dict[str, float]:
    return {f"q{i:03d}": float(v) for i, v in enumerate(values)}


@pytest.fixture
def baseline_values() -> np.ndarray:
    return np.random.default_rng(11).uniform(0.2, 0.8, 300)


def test_a_clearly_better_candidate_is_significant(baseline_values: np.ndarray) -> None:
    noise = np.random.default_rng(12).normal(0.0, 0.05, 300)
    result = paired_test("ndcg@10", scores(baseline_values), scores(baseline_values + 0.1 + noise))
    assert result.n == 300
    assert result.delta == pytest.approx(result.mean_candidate - result.mean_baseline)
    assert result.delta == pytest.approx(0.1, abs=0.01)
    assert result.p_value < 0.01
    assert 0.0 < result.ci_low < result.delta < result.ci_high
    assert result.significant()
    assert result.significant(alpha=0.01)


def test_pairing_finds_a_small_consistent_gain_that_two_independent_means_would_miss(
    baseline_values: np.ndarray,
) -> None:
    # Examples differ a lot (sd 0.17) but the candidate gains 0.02 on almost each one (noise sd 0.01): unpaired, a
    # 0.02 shift is about one standard error and not significant; paired, it is unmistakable.
    noise = np.random.default_rng(17).normal(0.0, 0.01, 300)
    result = paired_test("ndcg@10", scores(baseline_values), scores(baseline_values + 0.02 + noise))
    assert result.p_value < 0.001
    assert result.ci_low > 0.015


def test_a_clearly_worse_candidate_is_significant_too(baseline_values: np.ndarray) -> None:
    result = paired_test("ndcg@10", scores(baseline_values), scores(baseline_values - 0.05))
    assert result.p_value < 0.01
    assert result.ci_high < 0


@pytest.mark.filterwarnings("error")
def test_identical_scores_give_p_one_and_a_zero_interval(baseline_values: np.ndarray) -> None:
    same = scores(baseline_values)
    result = paired_test("ndcg@10", same, dict(same))
    assert result == PairedComparison(
        metric="ndcg@10",
        n=300,
        mean_baseline=result.mean_baseline,
        mean_candidate=result.mean_baseline,
        delta=0.0,
        ci_low=0.0,
        ci_high=0.0,
        p_value=1.0,
    )
    assert not result.significant()


def test_a_noise_level_difference_is_not_significant(baseline_values: np.ndarray) -> None:
    noise = np.random.default_rng(13).normal(0.0, 0.1, 300)  # per-example noise ten times the mean shift
    result = paired_test("ndcg@10", scores(baseline_values), scores(baseline_values + 0.002 + noise))
    assert result.p_value > 0.05
    assert result.ci_low < 0.0 < result.ci_high
    assert not result.significant()


def test_binary_metric_with_a_few_changed_examples_is_not_significant() -> None:
    base = np.zeros(300)
    cand = base.copy()
    cand[:3] = 1.0  # three more hits out of 300: sign flips of three equal differences -> p = 2 / 2**3
    result = paired_test("hit_rate@10", scores(base), scores(cand))
    assert result.delta == pytest.approx(0.01)
    assert result.p_value == pytest.approx(0.25, abs=0.02)
    assert not result.significant()


def test_small_samples_get_an_exact_permutation_p_value() -> None:
    # 3 examples, all improved: of the 2**3 sign assignments only all-plus and all-minus are as extreme -> p = 2/8.
    result = paired_test("f1", {"a": 0.1, "b": 0.5, "c": 0.2}, {"a": 0.3, "b": 0.6, "c": 0.6})
    assert result.p_value == pytest.approx(0.25)


@pytest.mark.filterwarnings("error")
def test_a_constant_nonzero_difference_has_a_point_interval() -> None:
    result = paired_test("f1", {"a": 0.1, "b": 0.2, "c": 0.3}, {"a": 0.2, "b": 0.3, "c": 0.4})
    assert result.ci_low == pytest.approx(0.1)
    assert result.ci_high == pytest.approx(0.1)
    assert result.p_value == pytest.approx(0.25)


def test_only_the_common_ids_are_compared(caplog: pytest.LogCaptureFixture) -> None:
    baseline = {"a": 0.0, "b": 0.5, "c": 1.0, "only_base": 100.0}
    candidate = {"a": 0.5, "b": 0.5, "c": 1.0, "only_cand": -100.0}
    with caplog.at_level(logging.WARNING, logger="evaluation.significance"):
        result = paired_test("f1", baseline, candidate)
    assert result.n == 3
    assert result.mean_baseline == pytest.approx(0.5)
    assert result.mean_candidate == pytest.approx(2 / 3)
    assert "2 example(s) scored by only one system" in caplog.text


@pytest.mark.parametrize(
    ("baseline", "candidate"),
    [({"a": 1.0, "b": 1.0, "c": 0.0}, {"c": 1.0, "d": 0.0}), ({"a": 1.0}, {"a": 0.0}), ({}, {})],
)
def test_fewer_than_two_common_examples_is_an_error(baseline: dict[str, float], candidate: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"f1: [01] example\(s\) scored by both systems .* at least 2"):
        paired_test("f1", baseline, candidate)


def test_scores_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        paired_test("f1", {"a": 1.0, "b": float("nan")}, {"a": 0.0, "b": 1.0})


def test_the_seed_makes_it_deterministic_whatever_the_mapping_order(baseline_values: np.ndarray) -> None:
    noise = np.random.default_rng(14).normal(0.0, 0.1, 300)
    base, cand = scores(baseline_values), scores(baseline_values + 0.01 + noise)
    first = paired_test("f1", base, cand, n_resamples=999, seed=7)
    again = paired_test("f1", dict(reversed(base.items())), cand, n_resamples=999, seed=7)
    assert first == again
    other_seed = paired_test("f1", base, cand, n_resamples=999, seed=8)
    assert (other_seed.p_value, other_seed.ci_low) != (first.p_value, first.ci_low)  # the seed is really used
    assert other_seed.p_value == pytest.approx(first.p_value, abs=0.05)


_RUN_IN_CHILD = """
import json, numpy as np
from evaluation.significance import paired_test
rng = np.random.default_rng(18)
base = rng.uniform(0, 1, 200)
cand = base + rng.normal(0.01, 0.1, 200)
ids = [f"example-{i}" for i in range(200)]
r = paired_test("m", dict(zip(ids, base.tolist())), dict(zip(ids, cand.tolist())), n_resamples=999, seed=3)
print(json.dumps([r.p_value, r.ci_low, r.ci_high]))
"""


def test_results_do_not_depend_on_the_process_hash_seed() -> None:
    # Set iteration order changes with PYTHONHASHSEED; the ids are sorted so a rerun reproduces a gate decision.
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _RUN_IN_CHILD],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            stdout=subprocess.PIPE,
            text=True,
        )
        for hash_seed in ("1", "2")
    ]
    outputs = [json.loads(child.communicate(timeout=60)[0]) for child in children]
    assert all(child.returncode == 0 for child in children)
    assert outputs[0] == outputs[1]


def test_significant_rejects_a_meaningless_alpha() -> None:
    result = PairedComparison("m", 10, 0.5, 0.6, 0.1, 0.05, 0.15, 0.01)
    assert result.significant(0.05)
    assert not result.significant(0.01)  # strictly below alpha
    with pytest.raises(ValueError, match="alpha"):
        result.significant(0.0)


def test_compare_tests_the_metrics_both_results_have(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(15)
    base = rng.uniform(0, 1, 50)
    baseline = PerQuery(
        {
            "ndcg@10": scores(base),
            "only_baseline": scores(base),
            "groundedness": {"q000": 1.0},
            "exact_match": scores(base),
        }
    )
    candidate = PerQuery(
        {"exact_match": scores(base), "ndcg@10": scores(base + 0.2), "groundedness": {"q000": 0.0, "q001": 1.0}}
    )
    with caplog.at_level(logging.WARNING, logger="evaluation.significance"):
        results = compare(baseline, candidate, n_resamples=999)
    assert [r.metric for r in results] == ["ndcg@10", "exact_match"]
    assert results[0].significant()
    assert results[1].p_value == 1.0
    assert "groundedness: fewer than 2 examples" in caplog.text


def test_three_hundred_examples_and_six_metrics_take_well_under_two_seconds(baseline_values: np.ndarray) -> None:
    rng = np.random.default_rng(16)
    metrics = [f"m{i}" for i in range(6)]
    baseline = PerQuery({m: scores(baseline_values) for m in metrics})
    candidate = PerQuery({m: scores(baseline_values + rng.normal(0.01, 0.1, 300)) for m in metrics})
    paired_test("warm-up", {"a": 0.0, "b": 1.0}, {"a": 1.0, "b": 0.5})  # scipy's import is not the test's business
    start = time.perf_counter()
    results = compare(baseline, candidate)
    elapsed = time.perf_counter() - start
    assert len(results) == 6
    assert elapsed < 2.0, f"{elapsed:.2f} s"
