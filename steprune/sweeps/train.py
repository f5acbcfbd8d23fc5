"""One training run of a sweep trial or an ablation cell: `steprune train fit` in-process, into a given MLflow run.

    result = train_run(TrainRequest(configs=["experiments/stepprune_world.yaml"], overrides={"model.lam": 0.5},
                                    seed=0, run_id=child, tracking_uri=uri, experiment="sweeps", workdir=d))
    result.metrics["val/retention"], result.backbone, result.selector

The run goes through the project's own `StepPruneCLI` (same parser, same defaults, same config logging),
with: the sweep's values as `--<path>=<value>` overrides, `--seed_everything`, the MLflow logger pointed
at the run the sweep created (`run_id`, so it nests), checkpoints and the exported selector under the
run's own `workdir`, and the sweep's callbacks added next to the configured ones. Parse errors raise
(`exit_on_error` off) instead of exiting, so a bad trial fails alone.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from steprune.training.cli import LogConfigToMLflow, StepPruneCLI, checkpoint_callbacks
from steprune.training.stepprune_module import StepPruneModule


@dataclass
class TrainRequest:
    configs: Sequence[str]
    overrides: dict[str, Any]  # option path -> value, e.g. {"model.lam": 0.5, "temperature.end": 0.7}
    seed: int
    run_id: str
    tracking_uri: str
    experiment: str
    workdir: Path
    extra_args: Sequence[str] = ()  # fixed CLI overrides (the sweep file's train_args, then the command line's)
    callbacks: list[L.Callback] = field(default_factory=list)


@dataclass
class TrainResult:
    metrics: dict[str, float]  # the trainer's last logged values (val/ ones from the last validation)
    backbone: str
    selector: Path
    global_step: int


def cli_value(value: Any) -> str:
    """A value as jsonargparse reads it back exactly: strings as they are (a quoted "full" is no Literal
    choice), everything else as JSON (true/false/null, numbers with full precision, lists)."""
    return value if isinstance(value, str) else json.dumps(value)


def build_argv(request: TrainRequest) -> list[str]:
    workdir = Path(request.workdir)
    checkpoints = checkpoint_callbacks(workdir / "checkpoints")
    argv = ["fit"]
    for config in request.configs:
        argv += ["--config", str(config)]
    argv += list(request.extra_args)
    argv += [f"--{path}={cli_value(value)}" for path, value in request.overrides.items()]
    argv += [
        f"--seed_everything={request.seed}",
        f"--trainer.logger.init_args.tracking_uri={request.tracking_uri}",
        f"--trainer.logger.init_args.experiment_name={request.experiment}",
        f"--trainer.logger.init_args.run_id={request.run_id}",
        f"--trainer.callbacks={json.dumps(checkpoints)}",
        f"--export.path={workdir / 'selector.safetensors'}",
    ]
    return argv


class _ParseOnlyCLI(StepPruneCLI):
    """The real parser and its validation, without building the model or the data."""

    def instantiate_classes(self) -> None:
        pass


def check_train_argv(argv: Sequence[str]) -> None:
    """Parse a `steprune train fit` command line (without `fit` and `--ckpt_path`) with the real parser and its
    validation, building nothing: ValueError naming the problem (a missing config, an unknown key, a bad value)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        warnings.filterwarnings("ignore", message=".*seed.*")
        try:
            _ParseOnlyCLI(
                StepPruneModule,
                subclass_mode_data=True,
                run=False,
                args=list(argv),
                parser_kwargs={"exit_on_error": False},
            )
        except Exception as error:
            raise ValueError(f"the training command line does not parse: {error}") from error


def check_args(request: TrainRequest) -> None:
    """Parse the run's command line once, before any trial: a typo must not fail every trial of a study."""
    check_train_argv(build_argv(request)[1:])  # no `fit` subcommand with run=False


def train_run(request: TrainRequest) -> TrainResult:
    Path(request.workdir).mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        cli = StepPruneCLI(
            StepPruneModule,
            subclass_mode_data=True,
            args=build_argv(request),
            save_config_callback=LogConfigToMLflow,
            save_config_kwargs={"save_to_log_dir": False},
            trainer_defaults={"callbacks": list(request.callbacks)},
            parser_kwargs={"exit_on_error": False, "fit": {"exit_on_error": False}},
        )
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    return TrainResult(
        metrics=metrics,
        backbone=str(cli.model.hparams.backbone),
        selector=Path(request.workdir) / "selector.safetensors",
        global_step=int(cli.trainer.global_step),
    )
