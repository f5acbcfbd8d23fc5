"""`make bench` on the micro configuration: table rows, FLOPs ordering, JSON written; the --flops-only path."""

from __future__ import annotations

import json

import pytest

from steprune.eval import bench
from steprune.eval.bench import bench_config, main, run_bench
from steprune.eval.flops import measured_prefill_cost
from steprune.pruners import PRUNERS


def test_run_bench_rows_and_flops_ordering():
    report = run_bench("micro", methods=["uniform", "fastv", "pool"], budgets=[4], warmup=0, repeats=1)
    rows = {r["method"]: r for r in report["rows"]}
    assert list(rows) == ["vanilla", "uniform", "fastv", "pool"]
    assert rows["vanilla"]["tokens"] == 16 and rows["vanilla"]["speedup"] == 1.0
    assert rows["uniform"]["tokens"] == 4 and rows["uniform"]["ideal_fraction"] == 1.0
    assert rows["uniform"]["llm_tflops"] < rows["vanilla"]["llm_tflops"]
    # FastV keeps all 16 tokens in layer 0 and 4 after: layer-averaged tokens sit between the two
    assert rows["fastv"]["tokens"] == 4 and 4 < rows["fastv"]["equivalent_tokens"] < 16
    assert rows["uniform"]["llm_tflops"] < rows["fastv"]["llm_tflops"] < rows["vanilla"]["llm_tflops"]
    assert rows["fastv"]["selection_gflops"] > 0 and rows["uniform"]["selection_gflops"] == 0
    assert all(r["latency_ms"] > 0 for r in report["rows"])


def test_bench_counts_the_stepprune_selector_at_the_budget():
    report = run_bench("micro", methods=["uniform", "steprune"], budgets=[4], warmup=0, repeats=1)
    rows = {r["method"]: r for r in report["rows"]}
    # the untrained selector runs T_max = budget steps: exactly 4 tokens, and its own cost on top of uniform's
    assert rows["steprune"]["tokens"] == 4 and rows["steprune"]["selection_gflops"] > 0
    assert rows["steprune"]["llm_tflops"] == rows["uniform"]["llm_tflops"]
    selector_tflops = rows["steprune"]["selection_gflops"] / 1e3
    assert rows["steprune"]["total_tflops"] == pytest.approx(rows["uniform"]["total_tflops"] + selector_tflops)


def test_bench_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "--config",
                "micro",
                "--methods",
                "uniform",
                "--budgets",
                "8",
                "--warmup",
                "0",
                "--repeats",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["config"] == "micro" and report["visual_tokens"] == 16
    assert "Prefill cost" in capsys.readouterr().out


def test_flops_only_measures_no_time_and_costs_every_row_on_the_config(tmp_path, monkeypatch):
    def no_timing(*args, **kwargs):
        raise AssertionError("--flops-only must not time anything")

    monkeypatch.setattr(bench, "round_robin_latency_ms", no_timing)
    out = tmp_path / "flops.json"
    assert main(["--config", "micro", "--flops-only", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    config = bench_config("micro")
    n, text = report["visual_tokens"], report["text_tokens"]
    assert report["flops_only"] and report["proxy"]["text_intermediate_size"] == 1
    assert config.text_config.intermediate_size > 1, "FLOPs are costed on the real config, not on the proxy"
    methods = [m for m in PRUNERS.names() if m != "identity"]
    expected = {("vanilla", None)} | {(m, b) for m in methods for b in (5, 4, 2)}  # 192/128/64 of 576, on N = 16
    assert {(r["method"], r["budget"]) for r in report["rows"]} == expected and len(report["rows"]) == len(expected)
    for r in report["rows"]:
        assert r["latency_ms"] is None and r["speedup"] is None
        cost = measured_prefill_cost(config, n, r["stages"], round(r["tokens"]), text, r["selection_gflops"] * 1e9)
        assert r["llm_tflops"] == pytest.approx(cost.tflops("llm"), rel=1e-12)
        assert r["total_tflops"] == pytest.approx(cost.tflops(), rel=1e-12)
        assert r["llm_selection_tflops"] == pytest.approx((cost.llm + cost.selection) / 1e12, rel=1e-12)
    vanilla = report["rows"][0]
    assert vanilla["method"] == "vanilla" and vanilla["stages"] == [[0, n]]
    page = out.with_suffix(".md").read_text()
    assert "python -m steprune.eval.bench --config micro --flops-only" in page and "| steprune | 2 |" in page
    assert "latency" not in page
