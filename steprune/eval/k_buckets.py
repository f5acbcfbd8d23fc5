"""Accuracy of an adaptive method per K bucket (the StepPrune paper's Fig. 4): does a sample that stops early pay?

    rows = k_bucket_accuracy(ks, correct, unpruned)          # six log-spaced buckets of the per-question K
    bucket_spread(rows)                                       # max - min retention over buckets (fractions)
    print(k_bucket_markdown(rows))

`ks` (N,) is each question's kept-token count, `correct` (N,) its 0/1 exact match, `unpruned` (N,) the
unpruned model's 0/1 on the same questions. Buckets are log-spaced between the smallest and largest K, so the
few-token stops get buckets of their own. Each bucket reports its accuracy and its retention (accuracy over the
unpruned model's accuracy on the *same* questions, which controls for the questions a bucket happens to hold),
each with its 95 % bootstrap interval (`steprune.eval.intervals`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from steprune.eval.intervals import accuracy_interval

BUCKETS = 6
MIN_QUESTIONS = 20  # a bucket with fewer questions is shown but left out of the spread


def log_bucket_edges(k_min: int, k_max: int, buckets: int = BUCKETS) -> list[int]:
    """Integer edges [e_0, ..., e_m] (m <= buckets), bucket i = [e_i, e_{i+1}); e_0 = k_min, e_m = k_max + 1."""
    if k_min < 0 or k_max < k_min:
        raise ValueError(f"need 0 <= k_min <= k_max, got {k_min}, {k_max}")
    low = max(k_min, 1)  # K = 0 (no floor) shares the first bucket
    edges = np.unique(np.round(np.geomspace(low, k_max + 1, buckets + 1)).astype(int)).tolist()
    edges[0] = k_min
    edges[-1] = k_max + 1
    return sorted(set(edges))


def k_bucket_accuracy(
    ks: Sequence[int], correct: Sequence[int], unpruned: Sequence[int], buckets: int = BUCKETS, seed: int = 0
) -> list[dict[str, Any]]:
    """One row per non-empty bucket: K range, questions, mean K, accuracy and retention with 95 % intervals."""
    k = np.asarray(ks, dtype=np.int64)
    c = np.asarray(correct, dtype=np.float64)
    u = np.asarray(unpruned, dtype=np.float64)
    if not (k.shape == c.shape == u.shape) or k.ndim != 1 or k.size == 0:
        shapes = f"{k.shape}, {c.shape}, {u.shape}"
        raise ValueError(f"ks, correct and unpruned must be 1-D of one non-zero length, got {shapes}")
    edges = log_bucket_edges(int(k.min()), int(k.max()), buckets)
    rows = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (k >= low) & (k < high)
        if not inside.any():
            continue
        if inside.sum() >= 2:
            accuracy, retention = accuracy_interval(c[inside], u[inside], seed=seed)
            acc_ci, ret_ci = accuracy.as_list(), retention.as_list()
        else:  # one question: no interval
            acc_ci = ret_ci = None
        unpruned = float(u[inside].mean())
        rows.append(
            {
                "k_low": low,
                "k_high": high - 1,
                "n": int(inside.sum()),
                "k_mean": float(k[inside].mean()),
                "accuracy": float(c[inside].mean()),
                "accuracy_ci": acc_ci,
                "unpruned_accuracy": unpruned,
                "retention": float(c[inside].mean()) / unpruned if unpruned > 0 else float("nan"),
                "retention_ci": ret_ci,
            }
        )
    return rows


def bucket_spread(rows: Sequence[dict[str, Any]], key: str = "retention", min_n: int = MIN_QUESTIONS) -> float:
    """Max minus min of `key` over the buckets holding at least `min_n` questions (nan if fewer than two do)."""
    values = [r[key] for r in rows if r["n"] >= min_n and np.isfinite(r[key])]
    return float(max(values) - min(values)) if len(values) >= 2 else float("nan")


def k_bucket_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The bucket table with both spreads (points) under it."""

    def ci(values: Sequence[float] | None) -> str:
        return f"[{100 * values[0]:.1f}, {100 * values[1]:.1f}]" if values else "[n/a]"

    lines = [
        "| K bucket | questions | K mean | accuracy % [95% CI] | unpruned % | retention % [95% CI] |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['k_low']}-{r['k_high']} | {r['n']} | {r['k_mean']:.1f} | {100 * r['accuracy']:.1f} "
            f"{ci(r['accuracy_ci'])} | {100 * r['unpruned_accuracy']:.1f} | {100 * r['retention']:.1f} "
            f"{ci(r['retention_ci'])} |"
            for r in rows
        ),
        "",
        f"Spread over buckets with >= {MIN_QUESTIONS} questions: accuracy "
        f"{100 * bucket_spread(rows, 'accuracy'):.1f} points, retention {100 * bucket_spread(rows):.1f} points.",
        "",
    ]
    return "\n".join(lines)
