"""`make bench` on the micro configuration: table rows, FLOPs ordering, JSON written."""

from __future__ import annotations

import json

import pytest

from steprune.eval.bench import main, run_bench


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
