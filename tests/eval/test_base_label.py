"""`steprune.eval.base_label`: a world report names the base it was measured on, and a study refuses
baselines measured on a base that has been rebuilt since."""

from __future__ import annotations

import json

import pytest

from steprune.eval.base_label import base_facts, base_line, check_same_base


def write_info(root, sha: str, preset: str | None = "v4"):
    root.mkdir(parents=True, exist_ok=True)
    info = {
        "preset": preset,
        "test_accuracy": {"overall": 0.823, "count": 2000},
        "weights_sha256": {"model.safetensors": sha},
        "provenance": {"commit": "abc"},
    }
    (root / "build_info.json").write_text(json.dumps(info))
    return root


def test_facts_and_line_name_preset_accuracy_and_fingerprint(tmp_path):
    facts = base_facts(write_info(tmp_path / "base", "2f5b4856437f630e61cd"))
    assert facts["preset"] == "v4" and facts["test_accuracy"] == 0.823 and facts["test_questions"] == 2000
    assert facts["weights_sha256"] == "2f5b4856437f630e61cd" and facts["commit"] == "abc"
    line = base_line(facts)
    assert line.startswith("Base: **v4** (82.3 % on 2000 test questions, weights sha256 2f5b4856437f…")
    assert base_line(base_facts(write_info(tmp_path / "c", "ff", preset=None))).startswith("Base: a custom recipe")
    assert base_facts(tmp_path / "nowhere") is None and base_line(None) == ""


def test_a_rebuilt_base_is_refused_with_both_fingerprints(tmp_path):
    base = write_info(tmp_path / "base", "1111aaaa2222bbbb")
    recorded = base_facts(base)
    check_same_base(recorded, base)  # the same base: fine
    check_same_base(None, base)  # a report older than the record: nothing to compare
    write_info(base, "3333cccc4444dddd", preset="v5")
    with pytest.raises(ValueError, match=r"1111aaaa2222.*\(v4\).*3333cccc4444.*\(v5\).*steprune eval --suite world"):
        check_same_base(recorded, base)
