"""`steprune train`: the LightningCLI whose signature is the config schema (litgpt style).

    steprune train fit --config experiments/stepprune_world.yaml            # what `make train` runs
    steprune train fit --config experiments/stepprune_world.yaml --model.lam 1.0 --trainer.max_steps 50
    steprune train fit --print_config                                        # every option with its default

Defaults: MLflow tracking in a SQLite database under the project (`sqlite:///mlruns.db`, see `make mlflow-ui`),
checkpoints under `checkpoints/` with `last.ckpt` (resume with `--ckpt_path last`), written atomically
(`AtomicCheckpointIO`: a full disk keeps the previous `last.ckpt`) with the MLflow run they belong to (a resume
logs on into that run, `steprune.training.mlflow_run`), the text-gate and
temperature schedules as stateful callbacks, and the trained selector exported to
`artifacts/selector.safetensors`. YAML files pick classes with `class_path` / `init_args`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

from steprune.training.budget import BudgetController
from steprune.training.export import ExportSelector
from steprune.training.mlflow_run import MLflowRunResume
from steprune.training.schedules import LengthPenaltySchedule, TemperatureSchedule, TextGateSchedule
from steprune.training.stepprune_module import StepPruneModule

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"


def checkpoint_callbacks(dirpath: str | Path = "checkpoints") -> list[dict[str, Any]]:
    """`trainer.callbacks` as the CLI reads it: one ModelCheckpoint in `dirpath` keeping `last.ckpt` (for resume)."""
    init = {"dirpath": str(dirpath), "save_last": True, "every_n_train_steps": 50}
    return [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": init}]


class LogConfigToMLflow(SaveConfigCallback):
    """Stores the full resolved config as `config.yaml` in the run's MLflow artifacts (no log_dir needed)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logger = trainer.logger
        if isinstance(logger, MLFlowLogger) and trainer.is_global_zero:
            text = self.parser.dump(self.config, skip_none=False)
            logger.experiment.log_text(logger.run_id, text, "config.yaml")


class StepPruneCLI(LightningCLI):
    def before_fit(self) -> None:
        """Unwritable checkpoint dir, broken resume checkpoint, read-only MLflow DB: said before any step runs."""
        from steprune.training.preflight import check_fit_outputs

        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        check_fit_outputs(self.trainer, ckpt_path)
        for callback in self.trainer.callbacks:  # --ckpt_path: continue the checkpoint's MLflow run
            if isinstance(callback, MLflowRunResume):
                callback.attach(self.trainer, ckpt_path)

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        parser.add_lightning_class_args(TextGateSchedule, "text_gate")
        parser.add_lightning_class_args(TemperatureSchedule, "temperature")
        parser.add_lightning_class_args(LengthPenaltySchedule, "length_warmup")
        parser.add_lightning_class_args(BudgetController, "budget")
        parser.add_lightning_class_args(ExportSelector, "export")
        parser.add_lightning_class_args(MLflowRunResume, "mlflow_resume")
        parser.link_arguments("model.backbone", "data.init_args.backbone")
        parser.link_arguments("budget.target_k", "export.calibrate_to")  # a target K is calibrated exactly at the end
        parser.set_defaults(
            {
                "trainer.logger": {
                    "class_path": "steprune.training.mlflow_run.ResumableMLFlowLogger",
                    "init_args": {
                        "experiment_name": "stepprune",
                        "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
                    },
                },
                "trainer.callbacks": checkpoint_callbacks(),
                "trainer.plugins": [{"class_path": "steprune.training.atomic_checkpoint.AtomicCheckpointIO"}],
                "trainer.accelerator": "auto",
                "trainer.max_steps": 300,
                "trainer.log_every_n_steps": 5,
            }
        )


def train_main(argv: Sequence[str] | None = None) -> int:
    with warnings.catch_warnings():  # `steprune train ...` hands its own argv over on purpose
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        StepPruneCLI(
            StepPruneModule,
            subclass_mode_data=True,
            args=list(argv) if argv is not None else None,
            save_config_callback=LogConfigToMLflow,
            save_config_kwargs={"save_to_log_dir": False},
        )
    return 0
