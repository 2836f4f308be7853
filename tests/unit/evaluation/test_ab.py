"""The arm comparison of an A/B experiment: always-valid p-values that stay valid under repeated looks, the verdict
rules, and the figures read from a real request store (SQLite)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from evaluation.ab import (
    MIN_SAMPLES,
    MetricTest,
    always_valid_p,
    analyse,
    compare_means,
    compare_rates,
    decide,
)
from rag.experiment import Experiment
from rag.store import RequestRecord, RequestStore

ALPHA = 0.05
LOOKS = range(100, 2_001, 100)  # the monitor looks every 100 requests, 20 times


def first_detection(rng: np.random.Generator, p_champion: float, p_challenger: float) -> int | None:
    """Simulate 2,000 rated requests split evenly; the number of requests at the first significant look."""
    arm = rng.random(2_000) < 0.5
    good = np.where(arm, rng.random(2_000) < p_challenger, rng.random(2_000) < p_champion)
    for n in LOOKS:
        a, b = arm[:n], good[:n]
        test = compare_rates(
            "thumbs_up_rate",
            (int(b[~a].sum()), int(b[a].sum())),
            (int((~a).sum()), int(a.sum())),
            alpha=ALPHA,
            worse="lower",
        )
        if test.significant:
            return n
    return None


def naive_detection(rng: np.random.Generator, p: float) -> bool:
    """The same looks with a fixed-horizon two-proportion z-test: what the always-valid test protects against."""
    arm = rng.random(2_000) < 0.5
    good = rng.random(2_000) < p
    for n in LOOKS:
        a, b = arm[:n], good[:n]
        n_a, n_b = int((~a).sum()), int(a.sum())
        pooled = b.mean()
        se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
        z = abs(b[a].mean() - b[~a].mean()) / se if se else 0.0
        if math.erfc(z / math.sqrt(2)) <= ALPHA:
            return True
    return False


def test_identical_arms_looked_at_twenty_times_rarely_differ() -> None:
    rng = np.random.default_rng(7)
    runs = 400
    always_valid = sum(first_detection(rng, 0.7, 0.7) is not None for _ in range(runs)) / runs
    naive = sum(naive_detection(rng, 0.7) for _ in range(runs)) / runs
    assert always_valid <= ALPHA, always_valid
    assert naive > 2 * ALPHA  # peeking at a fixed-horizon test inflates false alarms: why the test is sequential


def test_a_clearly_worse_challenger_is_found_within_2000_requests() -> None:
    rng = np.random.default_rng(11)
    found = [first_detection(rng, 0.75, 0.55) for _ in range(50)]
    assert all(n is not None for n in found), found
    assert max(n for n in found if n is not None) <= 2_000


def test_p_values_and_untested_comparisons() -> None:
    assert always_valid_p(0.0, 0.01, 0.1) == 1.0
    assert always_valid_p(0.5, 0.001, 0.1) < 1e-6
    assert always_valid_p(0.2, 0.0, 0.1) == 0.0 and always_valid_p(0.0, 0.0, 0.1) == 1.0
    small = compare_rates("r", (5, 1), (MIN_SAMPLES - 1, 40), alpha=ALPHA, worse="lower")
    assert not small.tested and not small.significant and small.p_value == 1.0
    flat = compare_means("latency_ms", (10.0, 12.0), (1.0, 1.0), (200, 200), alpha=ALPHA)
    assert flat.tested and flat.significant and flat.challenger_worse  # 2 ms slower with 0.1 ms standard error
    faster = compare_means("latency_ms", (12.0, 10.0), (1.0, 1.0), (200, 200), alpha=ALPHA)
    assert faster.significant and not faster.challenger_worse


def test_the_verdict_reads_the_primary_metric_and_any_worse_guard_metric() -> None:
    def test(metric: str, diff: float, p: float, worse: str = "higher", tested: bool = True) -> MetricTest:
        return MetricTest(metric, 0.5, 0.5 + diff, diff, p, ALPHA, worse, tested)  # type: ignore[arg-type]

    primary_worse = test("thumbs_up_rate", -0.2, 0.001, "lower")
    primary_better = test("thumbs_up_rate", 0.2, 0.001, "lower")
    primary_flat = test("thumbs_up_rate", 0.0, 0.9, "lower")
    slower = test("latency_ms", 5.0, 0.001)
    assert decide((primary_worse,), primary_worse) == "challenger_worse"
    assert decide((primary_better,), primary_better) == "challenger_better"
    assert decide((primary_flat,), primary_flat) == "no_difference"
    assert decide((primary_better, slower), primary_better) == "challenger_worse"  # better answers, but slower
    waiting = test("thumbs_up_rate", 0.0, 1.0, "lower", tested=False)
    assert decide((waiting, slower), waiting) == "collecting"


def record(i: int, *, version: int, principal: str, at: float, abstained: bool = False) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{i}",
        at=at,
        principal=principal,
        tenant="acme",
        question=f"question {i}",
        stack_name="s",
        stack_version=version,
        index_version=1,
        answer="an answer",
        abstained=abstained,
        timings_ms={"total": 10.0 + (i % 5)},
    )


def test_analyse_reads_each_arm_from_the_request_store(tmp_path: Path) -> None:
    exp = Experiment("ab-1-v5", champion=4, challenger=5, share=0.5, alpha=ALPHA, started_at=1000.0, started_by="a")
    store = RequestStore(f"sqlite:///{tmp_path / 'requests.db'}", retention_days=None, purge_interval_s=None)
    with store:
        store.record(record(0, version=4, principal="early", at=999.0))  # before the experiment: not counted
        for i in range(1, 401):
            caller = f"user-{i % 40}"
            version = exp.version(exp.arm(f"acme/{caller}"))
            store.record(record(i, version=version, principal=caller, at=1000.0 + i, abstained=version == 5))
        other = 9 - exp.version(exp.arm("acme/user-0"))  # the arm user-0 is not on
        store.record(record(401, version=other, principal="user-0", at=1500.0))  # user-0 seen on both arms
        store.flush()
        for i in range(1, 401):
            store.set_feedback(f"r{i}", rating="up" if i % 3 else "down", comment=None, at=2000.0)
        store.flush()
        report = analyse(store, exp, now=3000.0)
    arms = {a.arm: a for a in (report.champion, report.challenger)}
    assert report.champion.requests + report.challenger.requests == 401
    assert report.champion.callers + report.challenger.callers == 41  # 40 callers, user-0 counted on both
    assert report.sticky_violations == 1
    assert arms["challenger"].abstained == arms["challenger"].requests and arms["champion"].abstained == 0
    assert report.champion.rated + report.challenger.rated == 400
    assert report.champion.mean_total_ms is not None and report.champion.sd_total_ms is not None
    abstention = next(t for t in report.tests if t.metric == "abstention_rate")
    assert abstention.challenger_worse
    assert report.verdict == "challenger_worse"
    assert report.to_json()["verdict"] == "challenger_worse" and '"verdict": "challenger_worse"' in report.tag()
