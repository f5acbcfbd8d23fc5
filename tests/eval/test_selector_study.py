"""`steprune.eval.selector_study`: trained selectors on a world report's questions, at equal K and equal FLOPs.

A tiny random saved base (like test_world_eval.py) and two random selectors forced to keep exactly 8 tokens
(STOP never wins before T_max = 8), so both are compared at the budget the baselines ran at.
"""

from __future__ import annotations

import json

import pytest

from steprune import PrunedVLM
from steprune.selector.selector import StepPruneSelector
from tests.inputs import make_inputs


def save_selector(base, path, target_k):
    vlm = PrunedVLM.from_pretrained(str(base), method="steprune", budget=8, allow_random=True)
    ctx = vlm.prepare(**make_inputs(vlm.processor)).context
    widths = ctx.vision_features.shape[-1], ctx.text_embeds.shape[-1]
    selector = StepPruneSelector(*widths, encoder_heads=2, decoder_heads=2, denoiser_heads=2, t_max=8)
    selector.set_stop_offset(-1e4, {"target_k": target_k, "mean_k": 8.0, "stop_offset": -1e4, "split": "val"})
    selector.save(path)
    return str(path)


def test_selectors_against_baselines_at_equal_k_and_flops(tiny_base, tmp_path):
    from steprune.eval.selector_study import main as study_main
    from steprune.eval.world_eval import main as world_main

    baselines = tmp_path / "world"
    args = ["--backbone", str(tiny_base), "--methods", "uniform,fastv", "--budgets", "8", "--limit", "6"]
    assert world_main([*args, "--match", "flops", "--out", str(baselines)]) == 0
    world = json.loads(baselines.with_suffix(".json").read_text())
    answers = {"vanilla": [1, 1, 1, 1, 1, 0], "uniform": [1, 0, 1, 0, 0, 0], "fastv": [1, 1, 0, 0, 0, 0]}
    for row in world["rows"]:  # the random base gets nothing right: give the baselines known answers
        row["correct"] = (
            answers[row["method"]] if not row.get("flops_match") or row["budget"] == 8 else [1] * 3 + [0] * 3
        )
        row["overall"] = sum(row["correct"]) / 6
    costly = {**world["rows"][1], "method": "holov", "budget": 12, "correct": [1] * 6, "overall": 1.0}
    world["rows"].append({**costly, "prefill_tflops": 1.0})  # best of all, but dearer than any selector
    baselines.with_suffix(".json").write_text(json.dumps(world))
    first = save_selector(tiny_base, tmp_path / "a.safetensors", 8)
    second = save_selector(tiny_base, tmp_path / "b.safetensors", 8)
    out = tmp_path / "study"
    spec = ["--selector", f"s0={first}", "--selector", f"s1={second}"]
    figure = tmp_path / "study.png"
    args = ["--baselines", str(baselines.with_suffix(".json")), *spec, "--out", str(out), "--figure", str(figure)]
    assert study_main(args) == 0
    assert figure.stat().st_size > 10_000
    report = json.loads(out.with_suffix(".json").read_text())
    s0, s1 = report["selectors"]
    assert (s0["name"], s0["k_mean"], s0["budget"], s0["target_k"]) == ("s0", 8.0, 8, 8)
    rows = {(r["method"], r["budget"]): r for r in world["rows"]}
    assert rows[("uniform", 8)]["overall"] == rows[("fastv", 8)]["overall"]  # a tie: the first row wins
    assert s0["equal_k"]["reference"] == "uniform@8"
    matched = next(r for r in world["rows"] if r.get("flops_match") and r["budget"] != 8)
    assert s0["equal_flops"]["reference"] == f"fastv@{matched['budget']}~8"  # 3 right against uniform's 2
    assert s0["retention"] == pytest.approx(sum(s0_correct := report["rows"][-2]["correct"]) / 5)
    assert s0["equal_k"]["diff_retention"] == pytest.approx((sum(s0_correct) - 2) / 5)  # paired, over vanilla's 5
    assert s0["equal_flops"]["diff_retention"] == pytest.approx((sum(s0_correct) - 3) / 5)
    low, high = s0["equal_k"]["diff_retention_ci"]
    assert low <= s0["equal_k"]["diff_retention"] <= high
    assert sum(b["n"] for b in s0["k_buckets"]) == 6  # every question in one bucket (all at K = 8)
    (group,) = report["groups"]  # same surrogate and target: one group of two seeds
    assert group["seeds"] == 2 and group["retention"] == pytest.approx((s0["retention"] + s1["retention"]) / 2)
    text = out.with_suffix(".md").read_text()
    assert "| s0 | paper | 8 | 8.0 (8-8) |" in text and "Accuracy per K bucket, s1" in text
    assert text.startswith("Base: a custom recipe") and report["base"]["path"] == str(tiny_base)
    world["base"]["weights_sha256"] = "0" * 64  # the baselines came from a base rebuilt since
    baselines.with_suffix(".json").write_text(json.dumps(world))
    with pytest.raises(SystemExit):
        study_main(args)


def test_a_missing_selector_or_report_is_named(tmp_path):
    from steprune.eval.selector_study import main as study_main

    (tmp_path / "s.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit):  # argparse: no report at w.json
        study_main(["--baselines", str(tmp_path / "w.json"), "--selector", str(tmp_path / "s.safetensors")])
    (tmp_path / "w.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no selector file.*make train"):
        study_main(["--baselines", str(tmp_path / "w.json"), "--selector", f"x={tmp_path / 'none.safetensors'}"])


def test_equal_flops_takes_the_best_baseline_that_costs_no_more():
    from steprune.eval.selector_study import best_at_cost

    rows = [
        {"method": "vanilla", "correct": [1], "overall": 1.0, "prefill_tflops": 1.0},
        {"method": "mmtok", "budget": 16, "correct": [1], "overall": 0.9, "prefill_tflops": 0.56},
        {"method": "mmtok", "budget": 32, "correct": [1], "overall": 0.95, "prefill_tflops": 0.71},
        {"method": "dart", "budget": 48, "correct": [1], "overall": 0.97, "prefill_tflops": 0.96},
    ]
    assert best_at_cost(rows, 0.74)["budget"] == 32  # a selector dearer than mmtok@16 meets mmtok@32
    assert best_at_cost(rows, 0.56)["budget"] == 16  # equal cost counts
    assert best_at_cost(rows, 0.5) is None


def test_a_selector_with_the_coverage_prior_is_its_own_group():
    from steprune.eval.selector_study import surrogate_label

    assert surrogate_label({"surrogate": "removal", "prior": "coverage"}) == "removal+coverage"
    absolute = {"surrogate": "removal", "prior": "coverage", "prior_stop": "absolute"}
    assert surrogate_label(absolute) == "removal+coverage-absolute"
    assert surrogate_label({"surrogate": "removal", "prior": "none"}) == "removal"
    assert surrogate_label({}) == "paper"  # a file written before either option existed


def test_equal_k_falls_back_to_the_next_budget_up_and_says_so():
    from steprune.eval.selector_study import equal_k_comparison

    def row(method, budget, correct):
        share = sum(correct) / 4
        return {
            "method": method,
            "budget": budget,
            "correct": correct,
            "overall": share,
            "retention": share,
            "k_mean": budget,
        }

    unpruned = [1, 1, 1, 1]
    rows = [row("mmtok", 16, [1, 1, 0, 0]), row("fastv", 32, [1, 1, 1, 0]), row("mmtok", 32, [1, 0, 0, 0])]
    ours = {**row("steprune", "adaptive", [1, 1, 1, 1]), "k_mean": 30.3}
    exact = equal_k_comparison({**ours, "k_mean": 16.2}, rows, 16, unpruned)
    assert (exact["reference"], exact["rule"]) == ("mmtok@16", "rounded K")
    above = equal_k_comparison(ours, rows, 30, unpruned)  # no run at 30: the best at 32, which keeps more tokens
    assert (above["reference"], above["rule"]) == ("fastv@32", "next budget up")
    assert above["diff_retention"] == pytest.approx(0.25)
    assert equal_k_comparison({**ours, "k_mean": 40.0}, rows, 40, unpruned) == {"reference": None, "rule": None}
