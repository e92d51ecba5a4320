"""How sure a difference between seed groups is: intervals and tests from scipy (no tables).

A seed group is the runs of one setting that differ only by their seed. Its mean gets a
Student's t interval; two groups are compared with Welch's t-test (unequal variances), whose
interval for the difference of means comes from the same Welch-Satterthwaite degrees of
freedom; several comparisons in one study are corrected with Holm's step-down method.

Why Welch and not a permutation test: with the 2-5 seeds a study runs, a permutation test
cannot reach the 5 % level at all (3 seeds against 3 have 20 splits, so its smallest two-sided
p is 0.1) and its p-values are coarse steps, not a usable scale. Welch's test assumes the
seed-to-seed noise of a final accuracy is roughly normal, which holds well for accuracies
averaged over thousands of images; `tests/test_evidence.py` checks its coverage on simulated
groups. Pure: numbers in, numbers out; the registry and the analysis both use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
MIN_SEEDS = 2  # a spread, and so an interval or a test, needs two seeds per group


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student's t interval for the mean of `values`; (nan, nan) with fewer than two."""
    sample = np.asarray(values, dtype=float)
    if len(sample) < MIN_SEEDS:
        return math.nan, math.nan
    if sample.var() == 0:  # seeds that agree exactly: scipy's interval is undefined at scale 0
        return float(sample[0]), float(sample[0])
    low, high = stats.t.interval(
        confidence, len(sample) - 1, loc=sample.mean(), scale=stats.sem(sample)
    )
    return float(low), float(high)


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b), with Welch's interval and two-sided p-value when both have 2 seeds."""

    difference: float
    low: float
    high: float
    p_value: float
    seeds_a: int
    seeds_b: int

    @property
    def testable(self) -> bool:
        return not math.isnan(self.p_value)

    @property
    def untestable_reason(self) -> str:
        """Why there is no interval: too few seeds, or seeds that all agree exactly."""
        fewest = min(self.seeds_a, self.seeds_b)
        if fewest < MIN_SEEDS:
            return f"not testable: {fewest} seed" + ("s" if fewest != 1 else "")
        return "not testable: no spread between seeds"


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """Welch's t-test of mean(a) - mean(b): the difference, its interval and p-value."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    if min(len(x), len(y)) < MIN_SEEDS or (x.var() == 0 and y.var() == 0):
        return Difference(difference, math.nan, math.nan, math.nan, len(x), len(y))
    result = stats.ttest_ind(x, y, equal_var=False)
    interval = result.confidence_interval(confidence)
    return Difference(
        difference,
        float(interval.low),
        float(interval.high),
        float(result.pvalue),
        len(x),
        len(y),
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment; NaN (untestable) entries stay NaN and do not count."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    factors = len(order) - np.arange(len(order))
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(factors * p[order]))
    return adjusted.tolist()
