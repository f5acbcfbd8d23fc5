"""95 % bootstrap confidence intervals for comparisons on a fixed set of questions (scipy.stats.bootstrap).

    from steprune.eval.intervals import accuracy_interval, paired_difference

    correct = [1, 0, 1, 1, ...]                        # one 0/1 per test question, for one method x budget
    unpruned = [1, 1, 1, 0, ...]                       # the unpruned model on the SAME questions, same order
    acc, retention = accuracy_interval(correct, unpruned, seed=0)
    acc.low, acc.high                                  # 95 % interval of the accuracy (a fraction)
    retention.point, retention.low                     # accuracy / unpruned accuracy, paired ratio bootstrap
    diff = paired_difference(stepprune, best_baseline, unpruned)   # retention points of A - B, paired

Every interval resamples *questions*: the methods being compared (and the unpruned model a retention is
divided by) are resampled jointly, question by question (`paired=True`), so what two methods share —
the same hard questions — cancels out of their difference. The default is scipy's BCa interval; where
the bootstrap distribution has no spread at all (every resample gives the same value: two methods that
agree on every question, a method right on every question) the interval is the point itself; where BCa is
undefined (the point at the edge of the distribution) it falls back to the percentile interval. A ratio is
undefined (NaN) when the unpruned accuracy is 0 on the questions or on some resample of them (tiny N).
Deterministic given `seed`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import bootstrap

Method = Literal["BCa", "percentile", "basic"]
CONFIDENCE = 0.95
RESAMPLES = 9999


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval (same unit as the point)."""

    point: float
    low: float
    high: float

    def as_list(self) -> list[float]:
        return [self.low, self.high]


def _vectors(*samples: Sequence[float]) -> list[np.ndarray]:
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    n = len(arrays[0])
    assert n > 0, "an interval needs at least one question"
    shapes = [a.shape for a in arrays]
    assert all(shape == (n,) for shape in shapes), f"paired samples must be 1-D of one length, got {shapes}"
    return arrays


def bootstrap_interval(
    samples: Sequence[Sequence[float]],
    statistic: Callable[..., np.ndarray],
    seed: int = 0,
    n_resamples: int = RESAMPLES,
    method: Method = "BCa",
    confidence: float = CONFIDENCE,
) -> Interval:
    """The paired bootstrap interval of `statistic(*samples, axis=-1)` over questions (resampled jointly)."""
    arrays = _vectors(*samples)
    with np.errstate(divide="ignore", invalid="ignore"):
        point = float(statistic(*arrays, axis=-1))
    if not np.isfinite(point):  # a ratio over an unpruned accuracy of 0
        return Interval(float("nan"), float("nan"), float("nan"))
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # DegenerateDataWarning: handled below
        result = bootstrap(
            arrays,
            statistic,
            n_resamples=n_resamples,
            vectorized=True,
            paired=True,
            confidence_level=confidence,
            method=method,
            rng=np.random.default_rng(seed),
        )
    distribution = result.bootstrap_distribution  # (n_resamples,)
    if not np.all(np.isfinite(distribution)):  # a ratio over a resample with unpruned accuracy 0
        return Interval(point, float("nan"), float("nan"))
    if np.all(distribution == distribution[0]):  # no spread: the interval is the point
        return Interval(point, point, point)
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):
        # BCa is undefined when the point sits at the edge of the distribution: fall back to percentiles
        alpha = 100 * (1 - confidence) / 2
        low, high = (float(v) for v in np.percentile(distribution, [alpha, 100 - alpha]))
    return Interval(point, low, high)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x.mean(axis=axis)


def _ratio(x: np.ndarray, unpruned: np.ndarray, axis: int = -1) -> np.ndarray:
    return x.mean(axis=axis) / unpruned.mean(axis=axis)


def _difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return a.mean(axis=axis) - b.mean(axis=axis)


def _retention_difference(a: np.ndarray, b: np.ndarray, unpruned: np.ndarray, axis: int = -1) -> np.ndarray:
    return (a.mean(axis=axis) - b.mean(axis=axis)) / unpruned.mean(axis=axis)


def accuracy_interval(
    correct: Sequence[float],
    unpruned: Sequence[float] | None = None,
    seed: int = 0,
    n_resamples: int = RESAMPLES,
    method: Method = "BCa",
) -> tuple[Interval, Interval | None]:
    """(accuracy, retention) intervals of one method from its per-question 0/1 correctness (N,).

    Retention = accuracy / unpruned accuracy, with `unpruned` (N,) — the unpruned model on the same questions —
    resampled jointly (a paired ratio bootstrap); None when `unpruned` is not given. Both are fractions.
    """
    accuracy = bootstrap_interval([correct], _mean, seed, n_resamples, method)
    if unpruned is None:
        return accuracy, None
    return accuracy, bootstrap_interval([correct, unpruned], _ratio, seed, n_resamples, method)


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    unpruned: Sequence[float] | None = None,
    seed: int = 0,
    n_resamples: int = RESAMPLES,
    method: Method = "BCa",
) -> Interval:
    """Paired per-question interval of method A minus method B on the same N questions (0/1 vectors (N,)).

    In accuracy (a fraction) without `unpruned`; in retention (fraction of the unpruned accuracy) with it,
    the unpruned model's correctness (N,) resampled jointly with both methods.
    """
    if unpruned is None:
        return bootstrap_interval([a, b], _difference, seed, n_resamples, method)
    return bootstrap_interval([a, b, unpruned], _retention_difference, seed, n_resamples, method)
