"""The selector-cost benchmark on the micro configuration: fractions, step counts, FLOPs, the files it writes."""

from __future__ import annotations

import json

import pytest
import torch

from steprune.eval.bench import bench_config
from steprune.eval.flops import llm_prefill_flops
from steprune.eval.selector_cost import main, run_selector_cost, selector_call
from steprune.pruners.stepprune import untrained_selector


def test_rows_hold_the_analytic_flops_and_consistent_fractions() -> None:
    report = run_selector_cost("micro", budgets=[8, 3], layers=1, warmup=0, repeats=1)
    config = bench_config("micro")
    selector = untrained_selector(config.vision_config.hidden_size, config.text_config.hidden_size)
    assert report["visual_tokens"] == 16 and report["llm_layers_timed"] == 1
    assert [r["budget"] for r in report["rows"]] == [8, 3]
    for row in report["rows"]:
        k = row["budget"]
        assert row["pointer_steps"] == k + 1
        assert row["selector_gflops"] == pytest.approx(selector.flops(16, 92, k + 1) / 1e9)
        assert row["llm_tflops"] == pytest.approx(llm_prefill_flops(config.text_config, k + 92) / 1e12)
        assert row["flops_fraction"] == pytest.approx(row["selector_gflops"] / 1e3 / row["llm_tflops"])
        assert row["selector_ms"] > 0 and row["llm_ms"] > 0
        assert row["time_fraction"] == pytest.approx(row["selector_ms"] / row["llm_ms"])
    # more pointer steps cost more FLOPs
    assert report["rows"][0]["selector_gflops"] > report["rows"][1]["selector_gflops"]


def test_the_timed_selection_runs_exactly_the_steps_asked_for() -> None:
    selector = untrained_selector(32, 32)
    # a STOP that wins at every step: without the continuation the loop would end after one step
    with torch.no_grad():
        decoder = selector.decoder
        decoder.norm.weight.zero_()  # the query becomes W_q @ norm.bias = e_0 at every step
        decoder.norm.bias.zero_()
        decoder.norm.bias[0] = 1.0
        decoder.pointer_q.weight.copy_(torch.eye(32))
        decoder.pointer_k.weight.copy_(torch.eye(32))  # u_j = M_j[0] / sqrt(D)
        decoder.stop[0] = 1e4
    steps = []
    selector.decoder.pointer_q.register_forward_hook(lambda *_: steps.append(1))  # one pointer query per step
    vision, text = torch.randn(1, 16, 32), torch.randn(1, 5, 32)
    text_mask = torch.ones(1, 5, dtype=torch.bool)
    # STOP first: K = 0 in one step (the floor min_k masks STOP at step 1 unless it is 0)
    assert selector.select(vision, text, text_mask, t_max=7, min_k=0).lengths.item() == 0
    assert len(steps) == 1
    steps.clear()
    keep = selector_call(selector, vision, text, 7)()
    assert len(steps) == 7 and keep.shape[0] == 1


def test_bad_budgets_and_layer_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="16 visual tokens"):
        run_selector_cost("micro", budgets=[16], layers=1, warmup=0, repeats=1)
    with pytest.raises(ValueError, match="--layers"):
        run_selector_cost("micro", budgets=[4], layers=3, warmup=0, repeats=1)


def test_main_writes_json_and_markdown(tmp_path) -> None:
    out = tmp_path / "cost.json"
    assert main(["--config", "micro", "--budgets", "4", "--layers", "2", "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["rows"][0]["budget"] == 4 and report["llm_layers_timed"] == 2
    text = out.with_suffix(".md").read_text()
    assert "python -m steprune.eval.selector_cost --config micro" in text and "| 4 | 5 |" in text
