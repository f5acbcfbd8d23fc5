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

MLflow params of a run: the module's and the data module's hparams (Lightning; `tau` is the temperature schedule's
start, linked from `--temperature.start`; `seed` is the data's seed), plus the run's `seed_everything` and every
schedule / controller value under its CLI name
(`temperature.end`, `text_gate.warmup_steps`, `length_warmup.warmup_steps`, `budget.target_k`, ...); the tag
`git_commit` is the package checkout's HEAD.
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


SCHEDULED_GROUPS = ("text_gate", "temperature", "length_warmup", "budget")
"""The CLI's callback groups whose values change training (schedules, the target-K controller): logged as params."""


def run_params(config: Any) -> dict[str, str]:
    """What MLflow should show beside the module's and data module's hparams: the run's seed as `seed_everything`
    (the resolved value; the param `seed` is the data module's own data seed, logged by Lightning) and every value of
    the schedule / controller callbacks under its CLI name (`temperature.end`, `budget.target_k`, ...)."""
    params = {"seed_everything": str(config.get("seed_everything"))}
    for group in SCHEDULED_GROUPS:
        values = config.get(group)
        for key, value in (vars(values) if hasattr(values, "__dict__") else dict(values or {})).items():
            params[f"{group}.{key}"] = str(value)
    return params


class LogConfigToMLflow(SaveConfigCallback):
    """Stores the full resolved config as `config.yaml` in the run's MLflow artifacts (no log_dir needed), logs
    `run_params` (the values the module's hparams do not show) and tags the run with the package's git commit."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        logger = trainer.logger
        if isinstance(logger, MLFlowLogger) and trainer.is_global_zero:
            from mlflow.entities import Param

            from steprune.training.provenance import commit_label

            client, run_id = logger.experiment, logger.run_id
            text = self.parser.dump(self.config, skip_none=False)
            client.log_text(run_id, text, "config.yaml")
            logged = client.get_run(run_id).data.params  # a sweep logs its overrides first; params are immutable
            params = [Param(k, v) for k, v in run_params(self.config).items() if k not in logged]
            client.log_batch(run_id, params=params)
            client.set_tag(run_id, "git_commit", commit_label())


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
        # the schedule sets the module's tau from its start on train start: one value, not a dead `--model.tau`
        parser.link_arguments("temperature.start", "model.tau")
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
