"""`run_suite` end to end on tiny local fixtures with the tiny random LLaVA (scores are meaningless; the
pipeline must run), the JSON / Markdown writers, and `suite_main` as the CLI will call it."""

from __future__ import annotations

import json

import pytest

from steprune.eval.suite import SUITES, markdown_table, run_suite, suite_main, write_results
from steprune.pruned_vlm import PrunedVLM
from tests.eval import benchmark_fixtures as fx


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return fx.make_all(tmp_path_factory.mktemp("suite_data"))


def test_run_suite_end_to_end(llava, data_dir, tmp_path):
    model, processor = llava
    vlm = PrunedVLM(model, processor, method="uniform", budget=4)
    result = run_suite(vlm, suite="llava15", limit=3, batch_size=4, data_dir=data_dir, progress=False)
    assert result["method"] == "uniform" and result["budget"] == 4 and result["visual_tokens"] == 16
    assert list(result["scores"]) == list(SUITES["llava15"])
    counts = {name: len(r["predictions"]) for name, r in result["results"].items()}
    # MMBench: 2 questions x (4 + 3) rotations; POPE: one per split; SQA: 2 rows with an image
    assert counts == {
        "gqa": 3,
        "mmbench_en": 7,
        "mmbench_cn": 7,
        "mme": 3,
        "pope": 3,
        "scienceqa_img": 2,
        "vqav2": 2,
        "textvqa": 2,
    }
    assert all(isinstance(p["prediction"], str) for r in result["results"].values() for p in r["predictions"])
    assert result["results"]["mme"]["metrics"].keys() >= {"perception", "cognition", "subtasks"}
    assert result["results"]["pope"]["metrics"]["splits"].keys() == {"adversarial", "popular", "random"}
    assert result["results"]["gqa"]["source"] == str(data_dir / "GQA")

    paths = write_results(result, tmp_path / "uniform_4")
    assert {p.name for p in paths} == {f"{n}.json" for n in SUITES["llava15"]} | {"summary.json"}
    gqa = json.loads((tmp_path / "uniform_4" / "gqa.json").read_text())
    assert gqa["method"] == "uniform" and gqa["split"] == "testdev" and len(gqa["predictions"]) == 3
    summary = json.loads((tmp_path / "uniform_4" / "summary.json").read_text())
    assert summary["scores"] == result["scores"] and "predictions" not in json.dumps(summary)


def test_markdown_table_layout():
    names = ["gqa", "mme", "pope"]

    def scores(*values):
        return dict(zip(names, values, strict=True))

    vanilla = {"method": "vanilla", "budget": None, "visual_tokens": 576, "scores": scores(60, 1800, 80)}
    runs = [
        {"method": "fastv", "budget": 64, "scores": scores(48.0, 1620.0, 64.0)},
        {"method": "visionzip", "budget": 192, "scores": scores(60.0, 1800.0, 84.0)},
        {"method": "dart", "budget": 64, "scores": scores(54.0, 1800.0, 72.0)},
    ]
    lines = markdown_table(runs, vanilla, names).splitlines()
    assert lines[0] == "| Method | GQA | MME | POPE | Avg. |"
    assert lines[2].startswith("| *Upper bound, 576 tokens (100%)* |")
    assert lines[3] == "| Vanilla | 60.0 | 1800 | 80.0 | 100.0% |"
    assert lines[4].startswith("| *Retain 192 tokens (↓ 66.7%)* |")
    assert lines[5] == "| visionzip | 60.0 | 1800 | 84.0 | 101.7% |"
    assert lines[6].startswith("| *Retain 64 tokens (↓ 88.9%)* |")
    assert lines[7] == "| dart | 54.0 | 1800 | 72.0 | 93.3% |"  # (0.9 + 1 + 0.9) / 3
    assert lines[8] == "| fastv | 48.0 | 1620 | 64.0 | 83.3% |"  # (0.8 + 0.9 + 0.8) / 3


def test_suite_main_writes_json_and_table(data_dir, tmp_path, capsys):
    out = tmp_path / "reports"
    argv = ["--backbone", "tiny-llava", "--method", "uniform,random", "--budget", "8,4", "--limit", "2"]
    argv += ["--batch-size", "4", "--data-dir", str(data_dir), "--out", str(out), "--no-progress"]
    argv += ["--benchmarks", "gqa,mme,pope"]
    assert suite_main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "random_4",
        "random_8",
        "table.md",
        "uniform_4",
        "uniform_8",
        "vanilla",
    ]
    assert sorted(p.name for p in (out / "vanilla").iterdir()) == ["gqa.json", "mme.json", "pope.json", "summary.json"]
    table = (out / "table.md").read_text()
    assert "| Method | GQA | MME | POPE | Avg. |" in table
    assert "| Vanilla |" in table and "*Retain 8 tokens (↓ 50.0%)*" in table and "| random |" in table
    assert "first 2 questions" in table
    # a second call reuses the cached vanilla run and adds its method to the same table
    mtime = (out / "vanilla" / "summary.json").stat().st_mtime_ns
    argv2 = ["--backbone", "tiny-llava", "--method", "pool", "--budget", "4", "--limit", "2", "--no-progress"]
    assert suite_main([*argv2, "--data-dir", str(data_dir), "--out", str(out), "--benchmarks", "gqa,mme,pope"]) == 0
    assert (out / "vanilla" / "summary.json").stat().st_mtime_ns == mtime
    assert "| pool |" in (out / "table.md").read_text() and "| uniform |" in (out / "table.md").read_text()


def test_suite_main_bad_input(tmp_path):
    with pytest.raises(ValueError, match="Did you mean"):
        suite_main(["--backbone", "tiny-llava", "--method", "unifrom", "--budget", "4"])
    with pytest.raises(SystemExit):
        suite_main(["--backbone", "tiny-llava", "--method", "uniform"])  # no budget
    with pytest.raises(ValueError, match="unknown benchmark"):
        suite_main(["--backbone", "tiny-llava", "--benchmarks", "gqa,mmmu", "--out", str(tmp_path)])


def test_run_suite_on_qwen2_5_vl(qwen, data_dir):
    model, processor = qwen
    vlm = PrunedVLM(model, processor, method="uniform", budget=4)
    result = run_suite(vlm, benchmarks=["mmbench_en", "pope"], limit=1, batch_size=3, data_dir=data_dir, progress=False)
    assert result["suite"] == "custom" and result["visual_tokens"] is None  # dynamic resolution
    assert [len(r["predictions"]) for r in result["results"].values()] == [4, 1]
