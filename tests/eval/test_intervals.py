"""Bootstrap intervals: exact small cases, the large-n normal approximation, paired differences, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from steprune.eval.intervals import accuracy_interval, paired_difference


def test_percentile_interval_is_the_binomial_quantile_of_the_resampled_count():
    # 10 of 20 correct: a resample's count is Binomial(20, 0.5), whose 2.5 % / 97.5 % quantiles are 6 and 14
    # (cdf(5) = 0.021 < 0.025 < cdf(6) = 0.058; cdf(13) = 0.942 < 0.975 < cdf(14) = 0.979), away from both edges
    correct = [1, 0] * 10
    assert binom.ppf([0.025, 0.975], 20, 0.5).tolist() == [6, 14]
    accuracy, retention = accuracy_interval(correct, method="percentile")
    assert retention is None
    assert (accuracy.point, accuracy.low, accuracy.high) == (0.5, 0.3, 0.7)


def test_bca_matches_the_normal_approximation_at_large_n():
    rng = np.random.default_rng(0)
    correct = (rng.random(4000) < 0.7).astype(int)
    p = correct.mean()
    half = 1.959964 * math.sqrt(p * (1 - p) / len(correct))
    accuracy, _ = accuracy_interval(correct, seed=1)
    assert accuracy.point == pytest.approx(p)
    assert accuracy.low == pytest.approx(p - half, abs=2e-3) and accuracy.high == pytest.approx(p + half, abs=2e-3)


def test_retention_is_a_paired_ratio_bootstrap():
    rng = np.random.default_rng(1)
    unpruned = (rng.random(600) < 0.8).astype(int)
    flips = rng.random(600) < 0.1
    method = np.where(flips, 1 - unpruned, unpruned)  # agrees with the unpruned model on ~90 % of questions
    accuracy, retention = accuracy_interval(method, unpruned)
    assert retention.point == pytest.approx(method.mean() / unpruned.mean())
    assert retention.low < retention.point < retention.high
    # resampling the two jointly cancels the shared questions: narrower than the accuracy interval over p_unpruned
    assert retention.high - retention.low < (accuracy.high - accuracy.low) / unpruned.mean()
    # an unpruned model right everywhere: retention is the accuracy itself
    _, same = accuracy_interval(method, np.ones(600))
    assert (same.low, same.high) == pytest.approx((accuracy.low, accuracy.high), abs=0.01)


def test_paired_difference_of_identical_methods_has_zero_width():
    rng = np.random.default_rng(2)
    a = (rng.random(300) < 0.6).astype(int)
    unpruned = (rng.random(300) < 0.9).astype(int)
    for scale in (None, unpruned):
        diff = paired_difference(a, a.copy(), scale)
        assert (diff.point, diff.low, diff.high) == (0.0, 0.0, 0.0)


def test_paired_difference_counts_only_the_disagreements():
    # B = A except on 30 of 500 questions where A is right and B wrong: A - B = 0.06 and the interval is the
    # resampled share of those 30 questions, tight around 0.06 however noisy A itself is (a 0/1 of p = 0.5)
    rng = np.random.default_rng(3)
    a = (rng.random(500) < 0.5).astype(int)
    right = np.flatnonzero(a)[:30]
    b = a.copy()
    b[right] = 0
    diff = paired_difference(a, b)
    assert diff.point == pytest.approx(0.06)
    assert 0.03 < diff.low < 0.06 < diff.high < 0.09
    half = 1.96 * math.sqrt(0.06 * 0.94 / 500)  # a proportion of 500 questions
    assert diff.high - diff.low == pytest.approx(2 * half, abs=0.01)
    ret = paired_difference(a, b, np.ones(500))
    assert ret.point == pytest.approx(0.06) and ret.low > 0


def test_deterministic_given_a_seed_and_degenerate_cases():
    rng = np.random.default_rng(4)
    a = (rng.random(100) < 0.5).astype(int)
    unpruned = (rng.random(100) < 0.8).astype(int)
    assert accuracy_interval(a, unpruned, seed=7) == accuracy_interval(a, unpruned, seed=7)
    assert accuracy_interval(a, unpruned, seed=7)[1] != accuracy_interval(a, unpruned, seed=8)[1]  # ratios: no grid
    perfect, _ = accuracy_interval([1] * 20)
    assert (perfect.low, perfect.high) == (1.0, 1.0)
    _, undefined = accuracy_interval([1, 0, 1], [0, 0, 0])  # the unpruned model never right: no ratio
    assert math.isnan(undefined.point) and math.isnan(undefined.low)
