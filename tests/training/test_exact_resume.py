"""Resume is exact: a run stopped at a random step and resumed from last.ckpt ends with the very same selector.

The stop is an exception raised from a callback at the start of step `stop` (last.ckpt holds step `stop`), as a
kill would leave it; the resumed run continues from it with `ckpt_path=last.ckpt`. Every selector tensor must equal
the uninterrupted run's bit for bit (`torch.equal`), for the paper surrogate (VP noise from the global torch RNG)
and the removal surrogate with sampled pointer actions (the module's own explore generator).
"""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from steprune.data.world_datamodule import WorldDataModule
from steprune.training.atomic_checkpoint import AtomicCheckpointIO
from steprune.training.schedules import TemperatureSchedule, TextGateSchedule
from steprune.training.stepprune_module import StepPruneModule
from tests.training.test_stepprune_module import backbone  # noqa: F401 (fixture)

STEPS = 7


class Killed(Exception):
    """Stands for a SIGKILL: the run stops between two steps, after last.ckpt was written."""


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


def fit(base: str, root: Path, surrogate: str, extra: list[L.Callback], ckpt: Path | None = None) -> StepPruneModule:
    L.seed_everything(0)
    module = StepPruneModule(base, t_max=4, warmup_steps=1, surrogate=surrogate, explore=surrogate == "removal")
    data = WorldDataModule(base, world={"max_objects": 3}, batch_size=2, val_size=2, val_batch_size=2)
    checkpoints = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = L.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
        callbacks=[checkpoints, TextGateSchedule(4), TemperatureSchedule(2.0, 1.0, steps=STEPS), *extra],
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    assert trainer.global_step == STEPS
    return module


@pytest.mark.parametrize("surrogate", ["paper", "removal"])
def test_a_run_stopped_at_a_random_step_resumes_bit_for_bit(backbone, tmp_path, surrogate):  # noqa: F811
    stop = random.Random().randint(1, STEPS - 2)
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
