"""Shared by the sweep tests: one micro base model per session and a writer of micro sweep files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from steprune.recipes.build_base import build_base
from tests.training.test_base_recipe import MICRO, MICRO_WORLD

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = str(ROOT / "experiments" / "stepprune_world.yaml")


@pytest.fixture(scope="session")
def micro_base_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep_base") / "base"
    build_base(out, world=MICRO_WORLD, recipe=MICRO, progress=False)
    return out


def micro_train_args(base: Path, steps: int = 2, val_every: int = 1) -> list[str]:
    """A few seconds of StepPrune training on the micro base (validation after every `val_every` steps)."""
    return [
        f"--model.backbone={base}",
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={val_every}",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        "--data.init_args.val_size=4",
        "--data.init_args.val_batch_size=4",
        "--data.init_args.batch_size=2",
        "--model.t_max=8",
        "--model.warmup_steps=1",
        "--text_gate.warmup_steps=1",
        f"--temperature.steps={steps}",
    ]


def write_micro_sweep(root: Path, base: Path, name: str = "micro", **changes: Any) -> Path:
    """A sweep file over lam/gamma/tau/beta on the micro base, its study and checkpoints under `root`."""
    steps, val_every = changes.pop("steps", 2), changes.pop("val_every", 1)
    data = {
        "kind": "sweep",
        "study_name": name,
        "storage": f"sqlite:///{root / 'optuna.db'}",
        "experiment": EXPERIMENT,
        "train_args": micro_train_args(base, steps, val_every),
        "seed": 0,
        "n_trials": 3,
        "objectives": [{"metric": "val/retention", "direction": "maximize"}],
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
        "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        "mlflow": {"experiment": f"sweeps-{name}"},
        "workdir": str(root / "checkpoints"),
        "params": {
            "lam": {"path": "model.lam", "low": 0.05, "high": 5.0, "log": True},
            "gamma": {"path": "model.gamma", "low": 0.7, "high": 1.0},
            "tau": {"path": "temperature.end", "low": 0.3, "high": 2.0, "log": True},
            "beta": {"path": "model.beta", "low": 1.0, "high": 50.0, "log": True},
        },
    }
    data.update(changes)
    path = root / f"{name}.yaml"
    path.write_text(f"# steprune sweep --config {path}\n" + yaml.safe_dump(data, sort_keys=False))
    return path
