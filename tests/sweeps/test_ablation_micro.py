"""A micro ablation grid (2 variants x 2 seeds on the micro base): MLflow runs tagged per cell, the summary table
(mean ± std), the paper's-ordering check, the reports, and a rerun that skips the finished cells."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from mlflow import MlflowClient

from steprune.eval.base_label import base_facts
from steprune.sweeps.ablation import ablate_main, summarise
from steprune.sweeps.spec import parse_ablation
from tests.sweeps.conftest import EXPERIMENT, micro_train_args


def _grid(root, base, **changes):
    data = {
        "kind": "ablation",
        "name": "micro_grid",
        "experiment": EXPERIMENT,
        "train_args": micro_train_args(base, steps=1, val_every=1),
        "seeds": [0, 1],
        "axes": {"aggregation": {"path": "model.aggregation", "values": {"full": "full", "last_step": "last_step"}}},
        "reference": "full",
        "test_limit": 4,
        "metrics": {"retention": "val/retention", "k": "val/k_mean"},  # the micro model may score 0 on test
        "mlflow": {"experiment": "ablation-micro"},
        "workdir": str(root / "checkpoints"),
        "out": str(root / "reports" / "ablation_micro"),
        **changes,
    }
    path = root / "grid.yaml"
    path.write_text("# steprune ablate --config grid.yaml\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def test_micro_ablation_runs_summarises_and_resumes(micro_base_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    base = shutil.copytree(micro_base_dir, tmp_path / "base")  # a copy of our own: its build_info changes below
    config = _grid(tmp_path, base)
    assert ablate_main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ablation micro_grid" in out and "full > last_step" in out
    report = json.loads((tmp_path / "reports" / "ablation_micro.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"full", "last_step"} and all(r["seeds"] == [0, 1] for r in rows.values())
    assert all(r["retention_mean"] >= 0 and r["retention_std"] >= 0 and r["k_mean"] > 0 for r in rows.values())
    assert [c["claim"] for c in report["paper_ordering"]] == ["full > last_step"]
    text = (tmp_path / "reports" / "ablation_micro.md").read_text()
    assert "| full | 2 |" in text
    sha = base_facts(base)["weights_sha256"]
    assert report["base"]["weights_sha256"] == sha and not report["base_mismatch"] and not report["base_unrecorded"]
    assert text.startswith("Base: ") and sha[:12] in text.splitlines()[0] and "4 test questions" in text

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ablation-micro")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    cells = [r for r in runs if r.data.tags.get("sweep.role") == "cell"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED" and len(cells) == 4
    assert {(r.data.tags["variant"], r.data.tags["seed"]) for r in cells} == {
        (v, s) for v in ("full", "last_step") for s in ("0", "1")
    }
    for run in cells:
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id and run.info.status == "FINISHED"
        assert {"method", "budget", "seed", "variant", "git_commit"} <= set(run.data.tags)
        variant = run.data.tags["variant"]
        assert run.data.params["model.aggregation"] == variant and run.data.params["aggregation"] == variant
        assert {"test/retention", "test/k_mean", "val/retention"} <= set(run.data.metrics)
        assert run.data.params["seed_everything"] == run.data.tags["seed"], "the cell's seed is a param too"
        (final,) = client.get_metric_history(run.info.run_id, "final/retention")
        last = client.get_metric_history(run.info.run_id, "val/retention")[-1]
        assert (final.step, final.value) == (last.step, last.value), "final/* sits on the val/* curve"
        assert "figures/k_histogram.png" in {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"ablation.md", "ablation.json"} <= {a.path for a in client.list_artifacts(parent[0].info.run_id)}

    # a rerun trains nothing: every cell finished; the table is rebuilt from MLflow. The base was "rebuilt" in
    # between (another weights fingerprint in its build_info), so the report says which cells predate it
    info = json.loads((base / "build_info.json").read_text())
    info["weights_sha256"] = {"model.safetensors": "0" * 64}
    (base / "build_info.json").write_text(json.dumps(info))
    assert ablate_main(["--config", str(config)]) == 0
    again = json.loads((tmp_path / "reports" / "ablation_micro.json").read_text())
    assert again["reused"] == 4 and again["rows"] == report["rows"]
    assert len(again["base_mismatch"]) == 4
    assert "Rebuilt since" in (tmp_path / "reports" / "ablation_micro.md").read_text()
    assert len(client.search_runs([experiment.experiment_id])) == 5


def test_summary_statistics_and_ordering():
    spec = parse_ablation(
        {
            "name": "g",
            "experiment": EXPERIMENT,
            "seeds": [0, 1, 2],
            "variants": {"full": {"model.aggregation": "full"}, "last": {"model.aggregation": "last_step"}},
            "reference": "full",
        }
    )
    cells = {
        "full": {
            s: {"val/retention": r, "val/k_mean": 10.0 + s} for s, r in zip((0, 1, 2), (0.9, 0.8, 1.0), strict=True)
        },
        "last": {0: {"val/retention": 0.95, "val/k_mean": 5.0}},
    }
    report = summarise(spec, cells)
    full, last = report["rows"]
    assert full["retention_mean"] == pytest.approx(0.9) and full["retention_std"] == pytest.approx(0.1)
    assert full["k_mean"] == pytest.approx(11.0) and last["seeds"] == [0] and last["retention_std"] == 0.0
    assert report["paper_ordering"] == [
        {"claim": "full > last", "changed": "model.aggregation", "delta": pytest.approx(-0.05), "holds": False}
    ]
