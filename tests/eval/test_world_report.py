"""World reports with intervals: references per budget, paired differences, tables, a merged report, the figure.

Synthetic rows (no model): per-question 0/1 vectors drawn around known accuracies on the same questions.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from steprune.eval.world_compare import add_intervals, comparison_budget, ensure_intervals, references
from steprune.eval.world_tables import markdown

N = 200


def row(method: str, budget, correct: np.ndarray, tflops: float, k_mean: float | None = None, **extra) -> dict:
    k = float(budget) if isinstance(budget, int) else (k_mean if k_mean is not None else 144.0)
    return {
        "method": method,
        "budget": budget,
        "per_kind": {"counting": float(correct[::2].mean()), "existence": float(correct[1::2].mean())},
        "overall": float(correct.mean()),
        "count": len(correct),
        "correct": correct.astype(int).tolist(),
        "k_mean": k,
        "k_min": int(k),
        "k_max": int(k),
        "prefill_tflops": tflops,
        **extra,
    }


def degrade(unpruned: np.ndarray, rate: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(len(unpruned)) < rate, 0, unpruned)


@pytest.fixture
def report() -> dict:
    unpruned = (np.random.default_rng(0).random(N) < 0.8).astype(int)
    rows = [row("vanilla", None, unpruned, 1.0)]
    for i, budget in enumerate((8, 16)):
        scale = budget / 16
        rows += [
            row("uniform", budget, degrade(unpruned, 0.4 / scale, 10 + i), 0.3 * scale),
            row("mmtok", budget, degrade(unpruned, 0.08 / scale, 20 + i), 0.31 * scale),
            row("fastv", budget, degrade(unpruned, 0.25 / scale, 30 + i), 0.4 * scale),
        ]
    match = {"target_budget": 16, "budget": 11, "target_method": "uniform", "reachable": True}
    rows.append(row("fastv", 11, degrade(unpruned, 0.3, 40), 0.3, flops_match=match))
    rows.append(row("steprune", "adaptive", degrade(unpruned, 0.05, 50), 0.32, k_mean=15.6))
    for r in rows:
        r["retention"] = r["overall"] / rows[0]["overall"]
    return {"split": "test", "limit": N, "questions": N, "visual_tokens": 144, "rows": rows}


def test_references_are_the_best_baseline_at_each_comparison_budget(report):
    rows = report["rows"]
    assert [comparison_budget(r) for r in rows] == [None, 8, 8, 8, 16, 16, 16, 16, 16]  # StepPrune: round(15.6)
    chosen = references(rows)
    assert {b: rows[i]["method"] for b, i in chosen.items()} == {8: "mmtok", 16: "mmtok"}
    chosen = references(rows, "steprune")  # its only row is the reference of every budget
    assert set(chosen.values()) == {8}


def test_add_intervals_fills_every_row(report):
    add_intervals(report)
    rows = report["rows"]
    for r in rows:
        assert r["acc_ci"][0] <= r["overall"] <= r["acc_ci"][1]
        assert r["retention_ci"][0] <= r["retention"] <= r["retention_ci"][1]
    assert rows[0]["retention_ci"] == [1.0, 1.0] and rows[0]["reference"] is None
    reference = rows[5]  # mmtok @ 16
    assert reference["reference"] is None and report["intervals"]["references"] == {"8": "mmtok@8", "16": "mmtok@16"}
    learned = rows[-1]
    assert learned["reference"] == "mmtok@16"
    expected = np.mean(learned["correct"]) - np.mean(reference["correct"])
    assert learned["diff_accuracy"] == pytest.approx(expected)
    assert learned["diff_retention"] == pytest.approx(expected / rows[0]["overall"])
    assert learned["diff_retention_ci"][0] < learned["diff_retention"] < learned["diff_retention_ci"][1]
    assert rows[-2]["reference"] == "mmtok@16"  # the equal-FLOPs row competes at its target K


def test_markdown_shows_intervals_and_question_count(report):
    add_intervals(report)
    text = markdown(report)
    assert f"{N} questions" in text.splitlines()[0]
    line = next(x for x in text.splitlines() if x.startswith("| steprune |"))
    r = report["rows"][-1]
    assert f"{100 * r['overall']:.1f} [{100 * r['acc_ci'][0]:.1f}, {100 * r['acc_ci'][1]:.1f}]" in line
    assert f"{100 * r['diff_retention']:+.1f} [" in line
    assert "| mmtok | 16 |" in text and "| ref |" in text
    assert "| fastv | 11 (FLOPs of 16) |" in text
    assert "K=16: mmtok@16" in text


def test_a_merged_report_gets_its_intervals_recomputed(report):
    learned = {**copy.deepcopy(report), "rows": [report["rows"][0], report["rows"][-1]]}
    add_intervals(learned)
    assert learned["rows"][1]["reference"] is None  # no baseline in its own report
    merged = {**learned, "rows": [*learned["rows"], *report["rows"][1:-1]]}
    ensure_intervals(merged)
    assert merged["rows"][1]["reference"] == "mmtok@16"
    assert all(r["acc_ci"] is not None for r in merged["rows"])


def test_the_figure_is_written(report, tmp_path):
    from steprune.eval.figures import retention_vs_flops

    add_intervals(report)
    path = tmp_path / "world_pareto.png"
    retention_vs_flops(report["rows"], "synthetic").savefig(path)
    assert path.stat().st_size > 10_000
