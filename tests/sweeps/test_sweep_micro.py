"""A micro sweep (3 trials of 2 steps on the micro base): MLflow parent + nested runs with params and metrics,
the Optuna study holds the trials, a crashing trial is FAIL and the sweep goes on, a rerun resumes."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from steprune.sweeps.runner import run_sweep, sweep_main
from steprune.sweeps.spec import load_spec
from steprune.training.provenance import commit_label
from tests.sweeps.conftest import EXPERIMENT, write_micro_sweep


@pytest.fixture(scope="module")
def micro_sweep(micro_base_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("micro_sweep")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)  # MLflow artifacts (./mlartifacts) land in the temporary directory
    uri = f"sqlite:///{root / 'mlruns.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    # trial 0 crashes (beta must be > 0): recorded FAIL, counted, and the sweep goes on
    config = write_micro_sweep(root, micro_base_dir, enqueue=[{"beta": -1.0}])
    data = yaml.safe_load(config.read_text())
    data["params"]["beta"] = {"path": "model.beta", "low": 1.0, "high": 50.0}  # linear: -1 is a legal enqueue
    config.write_text(yaml.safe_dump(data))
    summary = run_sweep(config)
    yield root, config, uri, summary
    mp.undo()


def _study(config):
    spec = load_spec(config)
    return optuna.load_study(study_name=spec.study_name, storage=spec.storage)


def test_study_holds_the_trials_and_the_crash_is_recorded(micro_sweep):
    root, config, _, summary = micro_sweep
    assert summary["counted"] == 3 and summary["ran"] == 3 and summary["done"]
    trials = _study(config).trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert trials[0].state == TrialState.FAIL and "beta" in trials[0].user_attrs["error"]
    assert trials[0].params["beta"] == -1.0
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials[1:])
    assert all(set(t.params) == {"lam", "gamma", "tau", "beta"} for t in trials)
    assert all(len(t.intermediate_values) >= 1 for t in trials[1:]), "val/retention reported after each validation"
    assert (root / "checkpoints" / "micro" / "trial-0001" / "checkpoints" / "last.ckpt").exists()
    assert (root / "checkpoints" / "micro" / "trial-0002" / "selector.safetensors").exists()


def test_mlflow_has_the_parent_and_one_nested_run_per_trial(micro_sweep):
    _, config, uri, summary = micro_sweep
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sweeps-micro")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.run_id == summary["parent_run_id"]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials/counted"] == 3
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 3 and len(runs) == 4
    study = _study(config)
    start = yaml.safe_load(Path(EXPERIMENT).read_text())["temperature"]["start"]  # not the module's default tau (1.0)
    assert study.metric_names == ["val/retention"], "optuna-dashboard names the objective"
    by_trial = {int(r.data.tags["sweep.trial"]): r for r in children}
    for t in study.trials:
        run = by_trial[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert {"method", "budget", "seed", "variant", "git_commit"} <= set(run.data.tags)
        assert run.data.tags["method"] == "stepprune" and run.data.tags["variant"] == f"trial-{t.number}"
        assert float(run.data.params["model.lam"]) == pytest.approx(t.params["lam"])
        assert float(run.data.params["temperature.end"]) == pytest.approx(t.params["tau"])
        assert run.data.params["lam"] == str(t.params["lam"]), "the Lightning hparams land in the same run"
    failed = by_trial[0]
    assert failed.info.status == "FAILED" and failed.data.tags["optuna.state"] == "FAIL"
    assert "beta" in failed.data.tags["error"]
    for number in (1, 2):
        run = by_trial[number]
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] in ("COMPLETE", "PRUNED")
        assert {"val/retention", "val/k_mean", "train/loss_lm", "final/retention", "final/k_mean"} <= set(
            run.data.metrics
        )
        history = client.get_metric_history(run.info.run_id, "val/retention")
        assert len(history) == len(study.trials[number].intermediate_values) >= 1
        (final,) = client.get_metric_history(run.info.run_id, "final/retention")
        assert final.step == history[-1].step >= 1 and final.value == history[-1].value, "charts at the last step"
        params = run.data.params  # every scheduled value under its CLI name, the seed, the module's tau = the start
        assert params["seed_everything"] == "0" and params["tau"] == params["temperature.start"] == str(start)
        assert params["text_gate.warmup_steps"] == "1" and params["temperature.steps"] == "2"
        assert {"temperature.shape", "length_warmup.warmup_steps", "budget.target_k", "budget.eta"} <= set(params)
        assert run.data.tags["git_commit"] == commit_label()
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
        assert "figures/k_histogram.png" in artifacts
        assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "figures/retention_vs_k.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}


def test_rerun_resumes_the_same_study(micro_sweep, capsys):
    root, config, uri, summary = micro_sweep
    # the same command again: nothing to do, nothing counted twice
    assert sweep_main(["--config", str(config)]) == 0
    assert "study micro" in capsys.readouterr().out
    assert len(_study(config).trials) == 3
    # one more trial wanted: exactly one runs, in the same study and under the same parent run
    data = yaml.safe_load(config.read_text())
    data["n_trials"] = 4
    config.write_text(yaml.safe_dump(data))
    again = run_sweep(config)
    assert again["ran"] == 1 and again["counted"] == 4 and again["parent_run_id"] == summary["parent_run_id"]
    trials = _study(config).trials
    assert len(trials) == 4 and trials[3].state in (TrialState.COMPLETE, TrialState.PRUNED)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sweeps-micro")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")
    assert sorted(int(r.data.tags["sweep.trial"]) for r in children) == [0, 1, 2, 3]


def test_a_pruned_trial_stops_early_and_is_recorded(micro_base_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # retention can never reach 10: the first validation (step 1 of 3) prunes the trial
    config = write_micro_sweep(
        tmp_path, micro_base_dir, name="pruned", n_trials=1, steps=3, pruner={"name": "threshold", "lower": 10.0}
    )
    assert run_sweep(config)["pruned"] == 1
    (trial,) = _study(config).trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]
    run = MlflowClient(uri).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "PRUNED"
    history = MlflowClient(uri).get_metric_history(run.info.run_id, "val/retention")
    assert len(history) == 1, "training stopped at the pruning validation"
    import torch

    last = torch.load(
        tmp_path / "checkpoints" / "pruned" / "trial-0000" / "checkpoints" / "last.ckpt", weights_only=False
    )
    assert last["global_step"] == 1, "1 of 3 steps"
