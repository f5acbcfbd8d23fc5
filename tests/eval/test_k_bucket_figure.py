"""The Fig. 4 drawing of a saved selector study: one panel per selector, bars at the report's accuracies."""

from __future__ import annotations

import json

import pytest

from steprune.eval.k_bucket_figure import bucket_panels, figure, main
from steprune.eval.k_buckets import k_bucket_accuracy


def _report(names: list[str]) -> dict:
    ks = [2, 2, 5, 9, 9, 30]
    rows = k_bucket_accuracy(ks, [1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1])
    return {
        "questions": 6,
        "split": "test",
        "selectors": [{"name": n, "k_mean": 9.5, "bucket_spread_retention": 0.5, "k_buckets": rows} for n in names],
    }


def test_one_panel_per_selector_with_the_reports_accuracies() -> None:
    report = _report(["s0", "s1", "s2", "s3"])
    fig = figure(report)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 4  # a 2x3 grid, two panels hidden
    assert visible[1].get_title() == "s1: K 9.5, spread 50.0"
    heights = [bar.get_height() for bar in visible[0].patches]
    assert heights == pytest.approx([100 * r["accuracy"] for r in report["selectors"][0]["k_buckets"]])


def test_a_report_without_selectors_or_buckets_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="no selectors"):
        bucket_panels({"selectors": []})
    bad = _report(["s0"])
    bad["selectors"][0]["k_buckets"] = []
    with pytest.raises(ValueError, match="no k_buckets"):
        bucket_panels(bad)
    path = tmp_path / "study.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(SystemExit):
        main([str(path)])


def test_main_writes_the_png_beside_the_report(tmp_path) -> None:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(_report(["s0"])))
    assert main([str(path)]) == 0
    png = tmp_path / "study_k_buckets.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
