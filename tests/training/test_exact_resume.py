"""Resume is exact: a run stopped at a random step and resumed from last.ckpt ends with the very same selector.

The stop is an exception raised from a callback at the start of step `stop` (last.ckpt holds step `stop`), as a
kill would leave it; the resumed run continues from it with `ckpt_path=last.ckpt`. Every selector tensor must equal
the uninterrupted run's bit for bit (`torch.equal`), for the paper surrogate (VP noise from the global torch RNG)
and the removal surrogate with sampled pointer actions (the module's own explore generator).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from mlflow import MlflowClient
from safetensors.torch import load_file

from steprune.data.world_datamodule import WorldDataModule
from steprune.training.atomic_checkpoint import AtomicCheckpointIO
from steprune.training.schedules import TemperatureSchedule, TextGateSchedule
from steprune.training.stepprune_module import StepPruneModule
from tests.training.test_stepprune_module import backbone  # noqa: F401 (fixture)

STEPS = 7
ROOT = Path(__file__).resolve().parents[2]


class Killed(Exception):
    """Stands for a SIGKILL: the run stops between two steps, after last.ckpt was written."""


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


def stoppable_trainer(root: Path, steps: int, callbacks: list[L.Callback], **options: Any) -> L.Trainer:
    """A quiet CPU trainer for `steps` steps writing root/last.ckpt after every step (what a resume reads)."""
    checkpoints = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0, every_n_train_steps=1)
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[checkpoints, *callbacks],
        **options,
    )


def fit(base: str, root: Path, surrogate: str, extra: list[L.Callback], ckpt: Path | None = None) -> StepPruneModule:
    L.seed_everything(0)
    module = StepPruneModule(base, t_max=4, warmup_steps=1, surrogate=surrogate, explore=surrogate == "removal")
    data = WorldDataModule(base, world={"max_objects": 3}, batch_size=2, val_size=2, val_batch_size=2)
    schedules = [TextGateSchedule(4), TemperatureSchedule(2.0, 1.0, steps=STEPS)]
    trainer = stoppable_trainer(root, STEPS, [*schedules, *extra], val_check_interval=3, plugins=[AtomicCheckpointIO()])
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    assert trainer.global_step == STEPS
    return module


@pytest.mark.parametrize("when", ["random", "before-validation"])
@pytest.mark.parametrize("surrogate", ["paper", "removal"])
def test_a_run_stopped_at_a_random_step_resumes_bit_for_bit(backbone, tmp_path, surrogate, when):  # noqa: F811
    # before-validation: the checkpoint of step 3 is written before that step's validation runs (val_check 3)
    stop = random.Random().randint(1, STEPS - 2) if when == "random" else 3
    full = fit(backbone, tmp_path / "full", surrogate, [])
    with pytest.raises(Killed):
        fit(backbone, tmp_path / "killed", surrogate, [KillAt(stop)])
    assert torch.load(tmp_path / "killed" / "last.ckpt", weights_only=True)["global_step"] == stop
    resumed = fit(backbone, tmp_path / "killed", surrogate, [], ckpt=tmp_path / "killed" / "last.ckpt")
    expected, got = full.selector.state_dict(), resumed.selector.state_dict()
    assert expected.keys() == got.keys()
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    worst = max((float((expected[k] - got[k]).abs().max()) for k in differ), default=0.0)
    assert not differ, f"stopped at step {stop}: {len(differ)} of {len(expected)} tensors differ (max {worst:.2e})"
    assert torch.equal(full.k_bar, resumed.k_bar)


class SigkillAt(L.Callback):
    """A real kill: SIGKILL to this process at the start of step `step` (the CLI test adds it by class path)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def cli_args(base: str, root: Path, run: str, steps: int, kill_at: int | None = None) -> list[str]:
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(root / run / "checkpoints"), "save_last": True, "every_n_train_steps": 1},
    }
    kill = [{"class_path": f"{__name__}.SigkillAt", "init_args": {"step": kill_at}}] if kill_at is not None else []
    return [
        "fit",
        f"--model.backbone={base}",
        "--model.t_max=4",
        "--model.warmup_steps=1",
        "--data=steprune.data.world_datamodule.WorldDataModule",
        '--data.world={"max_objects": 3}',
        "--data.batch_size=2",
        "--data.val_size=2",
        "--data.val_batch_size=2",
        f"--trainer.logger.init_args.tracking_uri=sqlite:///{root / 'mlruns.db'}",
        f"--trainer.logger.init_args.experiment_name={run}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        "--trainer.val_check_interval=3",
        "--trainer.check_val_every_n_epoch=null",
        "--trainer.num_sanity_val_steps=0",
        f"--trainer.max_steps={steps}",
        f"--trainer.callbacks={json.dumps([checkpoint, *kill])}",
        f"--export.path={root / run / 'selector.safetensors'}",
        "--seed_everything=0",
        "--text_gate.warmup_steps=4",
        f"--temperature.steps={steps}",
    ]


@pytest.mark.slow
def test_sigkill_then_ckpt_path_last_continues_the_same_mlflow_run_bit_for_bit(backbone, tmp_path):  # noqa: F811
    stop = random.Random().randint(1, STEPS - 2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    train = [sys.executable, "-m", "steprune.cli", "train"]
    full = subprocess.run([*train, *cli_args(backbone, tmp_path, "full", STEPS)], env=env, cwd=tmp_path)
    assert full.returncode == 0
    killed = subprocess.run([*train, *cli_args(backbone, tmp_path, "killed", STEPS, stop)], env=env, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("killed").experiment_id
    (dead,) = client.search_runs([experiment])
    assert dead.info.status == "RUNNING"  # what a SIGKILL leaves
    resumed = subprocess.run(
        [*train, *cli_args(backbone, tmp_path, "killed", STEPS), "--ckpt_path=last"], env=env, cwd=tmp_path
    )
    assert resumed.returncode == 0
    runs = client.search_runs([experiment])
    assert [r.info.run_id for r in runs] == [dead.info.run_id], "the resumed fit logs into the killed run"
    assert runs[0].info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(dead.info.run_id, "train/loss")})
    assert steps[-1] >= STEPS - 1 and steps[0] == 0, steps
    expected = load_file(tmp_path / "full" / "selector.safetensors")
    got = load_file(tmp_path / "killed" / "selector.safetensors")
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert expected.keys() == got.keys() and not differ, f"killed at step {stop}: {len(differ)} tensors differ"
