"""Paired significance tests: is the candidate really better than the baseline, or is the difference noise?

Both systems are scored on the same examples, so the comparison is **paired**: per example, the difference
``candidate - baseline``. Pairing removes the example-to-example spread (some questions are hard for every system),
which is most of the variance, so a real difference is detected with far fewer examples than two independent means
would need.

* **p-value**: ``scipy.stats.permutation_test`` with ``permutation_type="samples"`` on the two paired arrays, statistic
  the mean difference, two-sided. Under the null hypothesis (the systems are exchangeable) swapping the two scores of
  an example is as likely as not, so the test randomly swaps them per example (a sign flip of the difference). No
  normality assumption, which matters for 0/1 metrics such as hit rate and exact match. With few examples (2^n
  swaps at most ``n_resamples``) scipy enumerates them all and the p-value is exact.
* **95% confidence interval** of the mean difference: ``scipy.stats.bootstrap`` with ``paired=True`` (examples are
  resampled as pairs), percentile method. Not BCa, scipy's default: BCa's jackknife made it about six times slower
  (0.26 s per metric at 300 examples) and it is unstable on the sparse, discrete differences of 0/1 metrics.

``significant`` reads the p-value only. The bootstrap interval and the permutation test answer slightly different
questions, so when only a handful of examples change (say 3 of 300, all the same way) the interval can exclude 0
while p is 0.25; the test is the decision, the interval shows the size of the effect.

Zero-variance differences are answered directly, not by resampling: identical scores give exactly p = 1 and the
interval (0, 0); a constant non-zero difference gives the interval (delta, delta), since every resample has the same
mean. (Scipy's BCa divides by zero there; the percentile method copes, but the answer is known without it.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from evaluation.metrics import PerQuery

logger = logging.getLogger(__name__)

CONFIDENCE_LEVEL = 0.95
"""Coverage of the bootstrap interval of the mean difference."""

_BATCH = 1000
"""Resamples evaluated per vectorised call: bounds memory (unbatched, 5,000 examples x 9,999 resamples is 800 MB) and
is about 25% faster than one batch at 300 examples; results do not depend on it."""

_CONSTANT_TOLERANCE = 1e-12
"""Differences closer than this are one value: ``0.3 - 0.2`` and ``0.2 - 0.1`` differ in the last bit only."""


@dataclass(frozen=True)
class PairedComparison:
    """One metric, baseline vs candidate, on the ``n`` examples both were scored on.

    ``delta`` is ``mean_candidate - mean_baseline`` (positive: the candidate scores higher); ``ci_low``/``ci_high``
    bound it with 95% confidence; ``p_value`` is the two-sided permutation-test p-value of ``delta`` being 0.
    """

    metric: str
    n: int
    mean_baseline: float
    mean_candidate: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float

    def significant(self, alpha: float = 0.05) -> bool:
        """True when the difference is unlikely to be noise: ``p_value < alpha``."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        return self.p_value < alpha


def _mean_difference(baseline: np.ndarray, candidate: np.ndarray, axis: int = -1) -> np.ndarray:
    """The statistic: mean of ``candidate - baseline`` along ``axis`` (vectorised: scipy passes batches)."""
    import numpy as np

    return np.mean(candidate - baseline, axis=axis)


def paired_test(
    metric: str,
    baseline: Mapping[str, float],
    candidate: Mapping[str, float],
    *,
    n_resamples: int = 9999,
    seed: int = 0,
) -> PairedComparison:
    """Compare two systems' per-example scores of one metric on the examples both have.

    Args:
        metric: The metric's name (carried into the result).
        baseline: Example id -> score of the system in production.
        candidate: Example id -> score of the system that would replace it.
        n_resamples: Random swaps for the permutation test and resamples for the bootstrap.
        seed: Seed of both; the same inputs and seed always give the same result (ids are sorted first, so the
            order of the mappings does not matter).

    Raises:
        ValueError: Fewer than two examples in common, a score that is not finite, or ``n_resamples < 1``.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    common = sorted(baseline.keys() & candidate.keys())
    if len(common) < 2:
        raise ValueError(
            f"{metric}: {len(common)} example(s) scored by both systems (baseline {len(baseline)}, candidate "
            f"{len(candidate)}); a paired test needs at least 2 with the same ids"
        )
    dropped = len(baseline) + len(candidate) - 2 * len(common)
    if dropped:
        logger.warning("%s: %d example(s) scored by only one system are left out of the comparison", metric, dropped)

    import numpy as np
    from scipy import stats

    base = np.array([baseline[qid] for qid in common], dtype=np.float64)
    cand = np.array([candidate[qid] for qid in common], dtype=np.float64)
    if not (np.all(np.isfinite(base)) and np.all(np.isfinite(cand))):
        raise ValueError(f"{metric}: scores must be finite numbers")
    mean_baseline = math.fsum(base.tolist()) / len(common)
    mean_candidate = math.fsum(cand.tolist()) / len(common)
    delta = mean_candidate - mean_baseline
    differences = cand - base

    def result(ci_low: float, ci_high: float, p_value: float) -> PairedComparison:
        return PairedComparison(
            metric=metric,
            n=len(common),
            mean_baseline=mean_baseline,
            mean_candidate=mean_candidate,
            delta=delta,
            ci_low=ci_low,
            ci_high=ci_high,
            p_value=p_value,
        )

    constant = float(np.ptp(differences)) <= _CONSTANT_TOLERANCE
    if constant and abs(float(differences[0])) <= _CONSTANT_TOLERANCE:
        return result(0.0, 0.0, 1.0)  # the same scores: nothing to test

    permutation_rng, bootstrap_rng = (np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(2))
    permutation = stats.permutation_test(
        (base, cand),
        _mean_difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        batch=_BATCH,
        alternative="two-sided",
        rng=permutation_rng,
    )
    p_value = min(1.0, float(permutation.pvalue))
    if constant:
        return result(delta, delta, p_value)  # every bootstrap resample has the same mean
    interval = stats.bootstrap(
        (base, cand),
        _mean_difference,
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        batch=_BATCH,
        confidence_level=CONFIDENCE_LEVEL,
        method="percentile",
        rng=bootstrap_rng,
    ).confidence_interval
    return result(float(interval.low), float(interval.high), p_value)


def compare(
    baseline: PerQuery, candidate: PerQuery, *, n_resamples: int = 9999, seed: int = 0
) -> list[PairedComparison]:
    """Paired tests of every metric both results have, in the baseline's metric order.

    A metric that fewer than two examples have in both (e.g. groundedness when nearly every answer abstained) cannot
    be tested; it is left out with a warning rather than failing the whole comparison.
    """
    comparisons: list[PairedComparison] = []
    for metric in baseline.metrics:
        if metric not in candidate.values:
            continue
        ours, theirs = baseline.values[metric], candidate.values[metric]
        if len(ours.keys() & theirs.keys()) < 2:
            logger.warning("%s: fewer than 2 examples scored by both systems; not compared", metric)
            continue
        comparisons.append(paired_test(metric, ours, theirs, n_resamples=n_resamples, seed=seed))
    return comparisons
