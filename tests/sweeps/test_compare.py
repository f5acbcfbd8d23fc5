"""The prepared comparison (`steprune runs`) on a real SQLite MLflow store, and the git commit runs are tagged with."""

from __future__ import annotations

import statistics
import subprocess

import pytest

from steprune.cli import main
from steprune.sweeps import tracking
from steprune.sweeps.compare import compare
from steprune.sweeps.tracking import Tracker
from steprune.training.provenance import PACKAGE_ROOT, commit_label, git_commit

CELLS = {  # variant -> seed -> (final/retention, final/k_mean); the variants differ in model.causal
    "reference": {0: (0.81, 16.2), 1: (0.84, 15.1), 2: (0.80, 16.9)},
    "causal": {0: (0.75, 17.0), 1: (0.79, 14.0)},
}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A grid as `steprune ablate` records it: a parent run and one nested run per (variant, seed)."""
    root = tmp_path_factory.mktemp("grid")
    tracker = Tracker(f"sqlite:///{root / 'mlruns.db'}", "grid")
    parent = tracker.parent_run({"ablation.grid": "g"}, "g", tags={"variant": "grid"})
    for variant, seeds in CELLS.items():
        for seed, (retention, k) in seeds.items():
            params = {"model.causal": variant == "causal", "seed_everything": seed, "seed": 0, "model.lam": 0.5}
            params["lam"] = 0.5
            if variant == "causal":
                params["causal"] = True
            tags = {"variant": variant, "seed": str(seed), "sweep.role": "cell"}
            run = tracker.child_run(parent, f"{variant}-seed{seed}", tags, params)
            tracker.log_metrics(run, {"final/retention": retention, "final/k_mean": k, "val/acc": 0.5}, step=600)
            tracker.finish(run)
    return tracker, parent


def test_the_comparison_has_one_row_per_run_and_mean_std_per_variant(grid):
    tracker, parent = grid
    table = compare(tracker.client, "grid")
    assert len(table.rows) == 5, "the parent run is not a row"
    assert table.metrics == ["final/k_mean", "final/retention"], "final/* by default, val/* left out"
    assert table.columns[:3] == ["variant", "git_commit", "seed_everything"]
    assert "model.causal" in table.columns and "causal" not in table.columns, "model.causal stands for causal"
    assert "model.lam" not in table.columns and "lam" not in table.columns, "equal in every run: not a column"
    assert [r["seed_everything"] for r in table.rows] == ["0", "1", "2", "0", "1"]
    assert all(r["git_commit"] == commit_label() for r in table.rows)
    by_variant = {g["group"]: g for g in table.groups}
    for variant, seeds in CELLS.items():
        retention = [r for r, _ in seeds.values()]
        mean, std = by_variant[variant]["final/retention"]
        assert by_variant[variant]["runs"] == len(seeds)
        assert mean == pytest.approx(statistics.mean(retention)) and std == pytest.approx(statistics.stdev(retention))
    under = compare(tracker.client, "grid", parent=parent, metrics=["final/retention"], group_by="seed_everything")
    assert under.metrics == ["final/retention"] and [g["group"] for g in under.groups] == ["0", "1", "2"]


def test_the_command_prints_the_table_and_names_a_missing_experiment(grid, capsys):
    tracker, _ = grid
    assert main(["runs", "--experiment", "grid", "--tracking-uri", tracker.uri]) == 0
    out = capsys.readouterr().out
    assert "mean ± std by variant" in out and "reference" in out and "0.8167" in out  # mean of 0.81, 0.84, 0.80
    with pytest.raises(SystemExit):
        main(["runs", "--experiment", "nope", "--tracking-uri", tracker.uri])
    assert "no MLflow experiment 'nope'" in capsys.readouterr().err


def test_runs_are_tagged_with_the_package_checkout_not_the_working_directory(tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    other.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    subprocess.run([*git, "-C", str(other), "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    theirs = subprocess.run(["git", "-C", str(other), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    monkeypatch.chdir(other)
    tracking.git_commit.cache_clear()
    try:
        label = tracking.git_commit()
    finally:
        tracking.git_commit.cache_clear()
    assert not label.startswith(theirs.strip())
    ours = git_commit()
    if ours["commit"] is not None:  # a checkout (the suite runs from one); an sdist install has no commit
        assert label == ours["commit"] + ("-dirty" if ours["dirty"] else "")
    assert git_commit(PACKAGE_ROOT / "steprune") == {"commit": None, "dirty": None}, "not the top of a checkout"
