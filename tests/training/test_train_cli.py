"""`steprune train fit` end to end on a micro backbone: MLflow (SQLite) run, checkpoint, export, resume."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from steprune.training.cli import StepPruneCLI, train_main
from steprune.training.provenance import commit_label
from steprune.training.stepprune_module import StepPruneModule
from tests.inputs import write_instruct_fixture

EXPERIMENTS = sorted(Path(__file__).resolve().parents[2].glob("experiments/*.yaml"))


class ParseOnlyCLI(StepPruneCLI):
    """The real CLI parser and validation, without building the model (no weights are loaded)."""

    def instantiate_classes(self) -> None:
        pass


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_every_experiment_file_parses_and_starts_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# steprune train fit --config") or first.startswith("# make "), "line 1: the command"
    configs = [Path(path.parents[1] / p) for p in first.split() if p.endswith(".yaml")] or [path]
    missing = [c for c in configs if not c.exists()]
    if missing:
        pytest.skip(f"{missing} not written yet")
    args = [arg for config in configs for arg in ("--config", str(config))]
    cli = ParseOnlyCLI(StepPruneModule, subclass_mode_data=True, run=False, args=args)
    assert cli.config["model"]["backbone"]
    assert cli.config["data"]["class_path"].startswith("steprune.data.")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli")
    records = write_instruct_fixture(root, 6, seed=2)
    (root / "data.json").write_text(json.dumps(records))
    return root


def test_fit_logs_to_mlflow_checkpoints_exports_and_resumes(micro, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    common = [
        "fit",
        "--model.backbone",
        str(micro / "base"),
        "--model.t_max",
        "6",
        "--model.warmup_steps",
        "1",
        "--data",
        "steprune.data.instruct_datamodule.InstructDataModule",
        "--data.train_source",
        str(micro / "data.json"),
        "--data.val_source",
        str(micro / "data.json"),
        "--data.image_folder",
        str(micro / "images"),
        "--data.batch_size",
        "3",
        "--data.val_limit",
        "3",
        "--trainer.logger.init_args.tracking_uri",
        uri,
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.val_check_interval",
        "2",
        "--trainer.check_val_every_n_epoch",
        "null",
        "--export.path",
        str(tmp_path / "selector.safetensors"),
        "--text_gate.warmup_steps",
        "4",
        "--trainer.log_every_n_steps",
        "1",
        "--seed_everything",
        "7",
        "--temperature.start",
        "2.0",
        "--temperature.end",
        "0.5",
    ]
    assert train_main([*common, "--trainer.max_steps", "2"]) == 0
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "selector.safetensors").exists()
    runs = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("stepprune").experiment_id]
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["lam"] == "0.5" and run.data.params["backbone"] == str(micro / "base")
    params = run.data.params  # the schedules under their CLI names, the seed, and tau = the schedule's start
    assert params["seed_everything"] == "7" and params["seed"] == "0", "the run's seed; `seed` is the data's"
    assert params["tau"] == params["temperature.start"] == "2.0"
    assert params["temperature.end"] == "0.5" and params["text_gate.warmup_steps"] == "4"
    assert params["budget.target_k"] == "None" and "length_warmup.warmup_steps" in params
    assert run.data.tags["git_commit"] == commit_label()
    artifacts = [a.path for a in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id)]
    assert "config.yaml" in artifacts
    assert {"train/loss_lm", "train/len_penalty", "train/k_mean", "val/acc", "val/retention"} <= set(run.data.metrics)
    # resume: the same command with --ckpt_path last continues from step 2 to step 4
    assert train_main([*common, "--trainer.max_steps", "4", "--ckpt_path", "last"]) == 0
    import torch

    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 4
    gate = next(v for k, v in state["callbacks"].items() if "TextGateSchedule" in k)
    assert gate["steps"] == 4
