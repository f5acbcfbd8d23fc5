"""The per-K-bucket accuracy of an adaptive method (the paper's Fig. 4): edges, counts, retention, spread."""

from __future__ import annotations

import math

import pytest

from steprune.eval.k_buckets import bucket_spread, k_bucket_accuracy, k_bucket_markdown, log_bucket_edges
from steprune.eval.report_figures import k_buckets


def test_edges_are_log_spaced_integers_covering_the_range() -> None:
    # geomspace(1, 33, 7) = 1, 1.79, 3.2, 5.74, 10.3, 18.4, 33
    assert log_bucket_edges(1, 32) == [1, 2, 3, 6, 10, 18, 33]
    assert log_bucket_edges(0, 32)[0] == 0  # K = 0 joins the first bucket
    assert log_bucket_edges(5, 5) == [5, 6]  # one value, one bucket
    with pytest.raises(ValueError, match="k_min"):
        log_bucket_edges(4, 2)


def test_bucket_rows_count_and_retention_by_hand() -> None:
    # bucket [1, 2): 2 questions, both right, unpruned right on both -> retention 1.0
    # bucket [18, 33): 4 questions, 1 right, unpruned right on 2 -> accuracy 0.25, retention 0.5
    ks = [1, 1, 20, 25, 30, 32]
    correct = [1, 1, 1, 0, 0, 0]
    unpruned = [1, 1, 1, 1, 0, 0]
    rows = k_bucket_accuracy(ks, correct, unpruned)
    assert [(r["k_low"], r["k_high"], r["n"]) for r in rows] == [(1, 1, 2), (18, 32, 4)]
    assert rows[0]["accuracy"] == 1.0 and rows[0]["retention"] == 1.0
    assert rows[1]["accuracy"] == 0.25 and rows[1]["unpruned_accuracy"] == 0.5 and rows[1]["retention"] == 0.5
    assert rows[1]["k_mean"] == pytest.approx(26.75)
    low, high = rows[1]["accuracy_ci"]
    assert 0.0 <= low <= 0.25 <= high <= 1.0
    assert bucket_spread(rows, min_n=1) == pytest.approx(0.5)
    assert math.isnan(bucket_spread(rows))  # no bucket has 20 questions
    assert "18-32 | 4 | 26.8 | 25.0" in k_bucket_markdown(rows)
    assert k_buckets(rows).axes  # the figure draws


def test_a_one_question_bucket_has_no_interval() -> None:
    rows = k_bucket_accuracy([1, 30, 31], [1, 0, 1], [1, 1, 1])
    assert rows[0]["n"] == 1 and rows[0]["accuracy_ci"] is None and rows[0]["retention"] == 1.0
    assert "[n/a]" in k_bucket_markdown(rows) and k_buckets(rows).axes


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="1-D of one non-zero length"):
        k_bucket_accuracy([1, 2], [1], [1, 1])
