"""`steprune eval --suite world` end to end on a tiny random saved base: intervals, equal FLOPs, the figure.

The base is an untrained tiny LLaVA (4 LLM layers, 16 visual tokens) saved like `make base` saves one; its
answers are wrong, so only the plumbing is checked here (the interval math: test_intervals.py).
"""

from __future__ import annotations

import json


def test_world_eval_with_intervals_flops_matching_and_figure(tiny_base, tmp_path):
    from steprune.eval.world_eval import main

    target, figure = tmp_path / "world", tmp_path / "world_pareto.png"
    args = ["--backbone", str(tiny_base), "--methods", "uniform,fastv", "--budgets", "8", "--limit", "6"]
    args += ["--match", "flops", "--reference", "uniform", "--out", str(target), "--figure", str(figure)]
    assert main(args) == 0
    report = json.loads(target.with_suffix(".json").read_text())
    rows = report["rows"]
    assert [(r["method"], r["budget"]) for r in rows[:3]] == [("vanilla", None), ("uniform", 8), ("fastv", 8)]
    assert report["questions"] == 6 and all(len(r["correct"]) == 6 for r in rows)
    assert all(r["acc_ci"][0] <= r["overall"] <= r["acc_ci"][1] for r in rows)
    assert rows[2]["reference"] == "uniform@8" and rows[2]["diff_accuracy_ci"] is not None
    (match,) = report["flops_matches"]
    assert match["method"] == "fastv" and match["target_budget"] == 8 and match["reachable"]
    matched = rows[3]
    assert matched["method"] == "fastv" and matched["budget"] == match["budget"] < 8
    assert matched["flops_match"]["target_budget"] == 8 and matched["reference"] == "uniform@8"
    token_tflops = match["token_flops"] / 1e12
    assert abs(matched["prefill_tflops"] - rows[1]["prefill_tflops"]) <= token_tflops  # equal FLOPs, within a token
    text = target.with_suffix(".md").read_text()
    assert text.startswith("Base: a custom recipe") and "6 questions" in text.splitlines()[2]  # base, then title
    assert "| uniform | 8 |" in text and f"| fastv | {match['budget']} (FLOPs of 8) |" in text
    assert figure.stat().st_size > 10_000
