"""The scaling benchmark: its smoke run covers every method at every N, batch and budget; exponents; peak memory."""

from __future__ import annotations

import json

import pytest
import torch

from steprune.eval.peak_memory import peak_bytes
from steprune.eval.scaling import main
from steprune.eval.scaling_report import curve_groups, exponents, figure
from steprune.pruners import PRUNERS


def test_smoke_run_reports_every_method_at_every_n(tmp_path):
    out = tmp_path / "scaling.json"
    assert main(["--smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").stat().st_size > 0
    methods = {r["method"] for r in report["rows"]}
    assert methods == (set(PRUNERS.names()) - {"identity"}) | {"steprune-d16"}
    cells = {(r["method"], r["n"], r["batch"], r["budget"]) for r in report["rows"]}
    assert len(cells) == len(report["rows"]) == len(methods) * 2 * 2 * 2  # N 16/64, batch 1/2, two budgets
    for r in report["rows"]:
        if r["kind"] == "in-llm":
            assert r["first_drop_layer"] >= 1 and r["extra_tflops"] > 0 and r["extra_ms"] is not None
        else:
            assert r["selection_ms"] > 0 and r["peak_mib"] > 0 and r["prefill_ms"] > 0, r
            assert r["selection_gflops"] >= 0
    assert all(x["same_picks"] for x in report["mmtok_before_after"])
    assert {x["budget"] for x in report["pointer_before_after"]} == {7, 21}
    assert report["bandwidth"]["copy_gbs"] > 0 and set(report["step_bytes"]) == {"32", "16"}
    text = out.with_suffix(".md").read_text()
    assert "Growth exponents" in text and "| mmtok | 1 |" in text


def test_exponents_are_the_log_log_slopes():
    rows = [
        {"method": m, "batch": 1, "n": n, "budget": round(f * n), "fraction": f, "kind": "pre-llm",
         "selection_ms": (n**2 if m == "quadratic" else n) * round(f * n) ** 0.5, "extra_ms": None}
        for m in ("quadratic", "linear")
        for n in (144, 576, 2304)
        for f in (1 / 9, 1 / 3)
    ]  # fmt: skip
    got = exponents(rows)
    assert got[("quadratic", 1)]["n"] == pytest.approx(2.5, abs=0.01)  # N^2 * K^0.5 with K proportional to N
    assert got[("linear", 1)]["n"] == pytest.approx(1.5, abs=0.01)
    assert got[("linear", 1)]["k"] == pytest.approx(0.5, abs=0.02)  # rounding of K


def test_figure_gives_every_curve_its_own_colour_and_merges_identical_ones():
    rows = [
        {"method": m, "batch": 1, "n": n, "budget": round(f * n), "fraction": f,
         "kind": "in-llm" if m in "ab" else "pre-llm", "selection_ms": None if m in "ab" else n * (i + 1),
         "extra_ms": float(n) if m in "ab" else None, "prefill_ms": 100.0 * n}
        for i, m in enumerate("abcdefghijklm")
        for n in (144, 576)
        for f in (1 / 9, 1 / 3)
    ]  # fmt: skip
    groups = curve_groups(rows, 1)
    assert groups["a = b"] == ["a", "b"]  # same curve at every (N, fraction): one legend entry
    assert len(groups) == 12
    ax = figure({"rows": rows}).axes[0]
    handles, labels = ax.get_legend_handles_labels()
    assert labels == [*groups, "pruned prefill"]
    colours = [tuple(h.get_color()) if not isinstance(h.get_color(), str) else h.get_color() for h in handles]
    assert len(set(colours)) == len(colours)  # 13 curves, 13 colours (the old C0-C9 cycle repeated after ten)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["144", "576"]


def test_peak_memory_counts_live_tensor_bytes_on_cpu():
    x = torch.randn(500, 500)  # 1 MB of inputs: not counted

    def two_live() -> torch.Tensor:
        a = x @ x  # 1 MB
        b = a * 2  # 2 MB live
        del a
        b.mul_(2)  # in place: nothing new
        return b.view(-1)[:10].clone()

    def one_at_a_time() -> float:
        return sum(float((x * i).sum()) for i in range(5))  # each temporary freed before the next

    assert peak_bytes(two_live) == 2 * 500 * 500 * 4
    assert peak_bytes(one_at_a_time) == pytest.approx(500 * 500 * 4, rel=0.01)
