"""Lightning DDP for the StepPrune module: a 2-process CPU (gloo) micro fit whose ranks end identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.inputs import write_instruct_fixture, write_micro_base

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("surrogate", ["removal"])
def test_two_ranks_end_with_identical_selector_and_controller_state(tmp_path, surrogate):
    base = write_micro_base(tmp_path / "base")
    records = write_instruct_fixture(tmp_path, 8, seed=3)
    (tmp_path / "data.json").write_text(json.dumps(records))
    reports = tmp_path / "ranks"
    command = [
        sys.executable, "-m", "steprune.cli", "train", "fit",
        "--model.backbone", str(base), "--model.t_max", "6", "--model.warmup_steps", "1",
        "--model.surrogate", surrogate,
        "--data", "steprune.data.instruct_datamodule.InstructDataModule",
        "--data.train_source", str(tmp_path / "data.json"), "--data.val_source", str(tmp_path / "data.json"),
        "--data.image_folder", str(tmp_path / "images"), "--data.batch_size", "2", "--data.val_limit", "2",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "3",
        "--trainer.limit_val_batches", "0", "--trainer.accelerator", "cpu",
        "--trainer.strategy", "ddp", "--trainer.devices", "2",
        "--budget.target_k", "3", "--budget.warmup_steps", "1",
        "--export.path", str(tmp_path / "selector.safetensors"),
        "--trainer.callbacks+=steprune.training.rank_check.RankConsistencyCheck",
        f"--trainer.callbacks.report_dir={reports}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["selector_sha256"] == ranks[1]["selector_sha256"]
    assert ranks[0]["budget"] == ranks[1]["budget"] and ranks[0]["budget"]["steps"] == 3
    assert ranks[0]["budget"]["lam"] != 0.0, "the controller acted (K started far above its target)"
    assert ranks[0]["k_bar"] == ranks[1]["k_bar"]
