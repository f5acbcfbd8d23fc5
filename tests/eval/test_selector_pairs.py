"""Selector-vs-selector paired differences from saved selector studies."""

from __future__ import annotations

import json

import pytest

from steprune.eval.selector_pairs import main, pair_row


def _study(path, selectors: dict[str, list[int]], vanilla: list[int]) -> str:
    rows = [{"method": "vanilla", "budget": "all", "correct": vanilla}]
    for name, correct in selectors.items():
        rows.append(
            {
                "method": "steprune",
                "variant": name,
                "correct": correct,
                "k_mean": 16.0,
                "retention": sum(correct) / sum(vanilla),
            }
        )
    path.write_text(json.dumps({"rows": rows}))
    return str(path)


def test_difference_is_a_minus_b_in_retention_with_an_interval(tmp_path) -> None:
    vanilla = [1] * 40
    a = _study(tmp_path / "a.json", {"paper": [1] * 20 + [0] * 20}, vanilla)
    b = _study(tmp_path / "b.json", {"removal": [1] * 36 + [0] * 4}, vanilla)
    row = pair_row(f"{a}:paper", f"{b}:removal")
    assert row["diff_retention"] == pytest.approx(0.5 - 0.9)
    low, high = row["diff_retention_ci"]
    assert low < -0.4 < high < 0  # a 16-question gap on 40 is clearly below zero
    assert row["questions"] == 40


def test_refuses_reports_on_different_questions_and_unknown_selectors(tmp_path, capsys) -> None:
    a = _study(tmp_path / "a.json", {"paper": [1, 0, 1, 1]}, [1, 1, 1, 1])
    b = _study(tmp_path / "b.json", {"removal": [1, 1, 1, 1]}, [1, 1, 0, 1])
    with pytest.raises(ValueError, match="not on the same questions"):
        pair_row(f"{a}:paper", f"{b}:removal")
    with pytest.raises(SystemExit):
        main([f"{a}:papr", f"{a}:paper"])
    assert "has no selector 'papr'; it has: paper" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([f"{a}:paper"])  # an odd count is not a pair
    assert "in pairs" in capsys.readouterr().err


def test_cli_prints_and_writes_the_table(tmp_path, capsys) -> None:
    vanilla = [1] * 10
    a = _study(tmp_path / "a.json", {"s0": [1] * 5 + [0] * 5, "s1": [1] * 10}, vanilla)
    out = tmp_path / "pairs.md"
    assert main([f"{a}:s0", f"{a}:s1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    assert "| 50.0 / 100.0 | -50.0 [" in printed
    assert json.loads(out.with_suffix(".json").read_text())[0]["diff_retention"] == pytest.approx(-0.5)
