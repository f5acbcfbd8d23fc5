"""One MLflow run per training run, across kills: `--ckpt_path last` continues the run the checkpoint was logged to.

    steprune train fit --config experiments/stepprune_world.yaml                  # MLflow run R, killed at step 12
    steprune train fit --config experiments/stepprune_world.yaml --ckpt_path last  # logs on into R, ends FINISHED

`MLflowRunResume` (a callback the CLI always adds, `--mlflow_resume.resume false` to opt out) writes the MLflow
run id and tracking URI into every checkpoint. Before a resumed fit starts (`StepPruneCLI.before_fit`), it reads
them from the checkpoint and points the `ResumableMLFlowLogger` (the CLI's default logger) at that run, set
back to RUNNING, so the metrics continue on the same run. When that run cannot be continued (a logger given
its own `run_id`, as a sweep trial is; another logger class; the run deleted or in another tracking store), a
new run starts and the old one, if this store has it and it is still RUNNING, is marked KILLED, with a warning.
`ResumableMLFlowLogger` also creates / migrates a SQLite DB once under a file lock before its client opens it
(`steprune.training.tracking_store`).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from steprune.training.tracking_store import prepare_tracking_store, sqlite_path

CHECKPOINT_KEY = "mlflow_run"


class ResumableMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger that can be pointed at an existing run before it logs (see `resume`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        uri = kwargs.get("tracking_uri", os.environ.get("MLFLOW_TRACKING_URI"))
        if isinstance(uri, str):
            prepare_tracking_store(uri)  # before MLFlowLogger's own client opens (and might migrate) the DB
        super().__init__(*args, **kwargs)
        self.given_run_id: str | None = self._run_id  # a run chosen by the caller (a sweep trial) is never replaced

    def resume(self, run_id: str) -> bool:
        """Log into `run_id` (set back to RUNNING) instead of a new run; False when it cannot (see the module)."""
        if self._initialized or self.given_run_id is not None:
            return False
        try:
            run = self._mlflow_client.get_run(run_id)
        except MlflowException:
            return False
        if run.info.lifecycle_stage != "active":
            return False
        self._run_id = run_id
        self._mlflow_client.update_run(run_id, status="RUNNING")
        return True


def resolve_checkpoint(trainer: L.Trainer, ckpt_path: str | Path | None) -> Path | None:
    """The file `ckpt_path` stands for, as Lightning resolves it: "last" is the newest last*.ckpt of the trainer's
    ModelCheckpoint directories; other keywords ("best", "hpc", "registry") or a missing file give None."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        pattern = re.compile(rf"^{ModelCheckpoint.CHECKPOINT_NAME_LAST}(-\d+)?{ModelCheckpoint.FILE_EXTENSION}$")
        dirs = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        found = [p for d in dirs if d.is_dir() for p in d.iterdir() if pattern.match(p.name) and p.is_file()]
        return max(found, key=lambda p: p.stat().st_mtime) if found else None
    path = Path(ckpt_path)
    return path if path.is_file() else None


class MLflowRunResume(L.Callback):
    """Records the MLflow run in each checkpoint and continues it on resume (see the module docstring)."""

    def __init__(self, resume: bool = True) -> None:
        """
        Args:
            resume: on `--ckpt_path`, log into the checkpoint's MLflow run instead of starting a new one.
        """
        self.resume = resume

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        logger = trainer.logger
        if isinstance(logger, MLFlowLogger) and logger.run_id is not None:
            checkpoint[CHECKPOINT_KEY] = {"run_id": logger.run_id, "tracking_uri": str(logger._tracking_uri)}

    def attach(self, trainer: L.Trainer, ckpt_path: str | Path | None) -> None:
        """Before `trainer.fit(ckpt_path=...)`: point the trainer's MLflow logger at the checkpoint's run."""
        path = resolve_checkpoint(trainer, ckpt_path) if self.resume else None
        logger = trainer.logger
        if path is None or not isinstance(logger, MLFlowLogger):
            return
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(CHECKPOINT_KEY)
        if not saved:
            return  # a checkpoint from before runs were recorded: a new run, as before
        if isinstance(logger, ResumableMLFlowLogger) and logger.resume(saved["run_id"]):
            return
        why = (
            f"the logger was given run_id {logger.given_run_id}"
            if isinstance(logger, ResumableMLFlowLogger) and logger.given_run_id
            else f"{type(logger).__name__} cannot continue a run (use {ResumableMLFlowLogger.__module__}."
            f"{ResumableMLFlowLogger.__name__})"
            if not isinstance(logger, ResumableMLFlowLogger)
            else "that run is not in this tracking store (deleted, or another tracking URI)"
        )
        marked = _mark_killed(saved["tracking_uri"], saved["run_id"])
        warnings.warn(
            f"{path} was logged to MLflow run {saved['run_id']}, which is not continued: {why}. A new run starts"
            + ("; the old one is marked KILLED" if marked else ""),
            stacklevel=2,
        )


def _mark_killed(uri: str, run_id: str) -> bool:
    """Mark a run left RUNNING by a killed process as KILLED; False when the store or the run is not there."""
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        return False  # never create a tracking DB just to mark a run in it
    try:
        client = MlflowClient(uri)
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_terminated(run_id, "KILLED")
    except Exception:  # an unreachable store, a missing run: nothing to mark
        return False
    return True
