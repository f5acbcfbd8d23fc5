"""Checks before `steprune train fit` spends any time: where it writes, and what it resumes from.

    check_fit_outputs(trainer, ckpt_path="last")    # StepPruneCLI.before_fit runs this

Each failure is a `PreflightError` naming the path, what is wrong and what to do: a checkpoint directory that
cannot be written (found by creating a file there, so a read-only file system counts also for root), a resume
checkpoint that is empty or not a PyTorch archive (a run killed while writing it: the bare `EOFError` from
torch.load otherwise), and a SQLite MLflow database that cannot be written (otherwise MLflow's
"'NoneType' object has no attribute 'experiment_id'" after the model has loaded).
"""

from __future__ import annotations

import sqlite3
import zipfile
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger

from steprune.cli_args import unwritable
from steprune.training.tracking_store import sqlite_path


class PreflightError(RuntimeError):
    """`steprune train fit` cannot run as configured; the message says what to change."""


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from, or None."""
    if path.stat().st_size == 0:
        return "is empty (0 bytes): a run was probably killed while writing it"
    if not zipfile.is_zipfile(path):
        return "is not a PyTorch checkpoint archive (truncated or overwritten)"
    return None


def tracking_db_problem(path: Path) -> str | None:
    """Why MLflow could not write the SQLite database at `path` (created when missing), or None."""
    if not path.exists():
        problem = unwritable(path, directory=False)
        return f"cannot be created: {problem}" if problem else None
    try:
        with sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30) as connection:
            connection.execute("BEGIN IMMEDIATE")  # takes the write lock: fails on a read-only file or disk
            connection.rollback()
    except sqlite3.OperationalError as error:
        return f"cannot be written ({error})"
    return None


def check_fit_outputs(trainer: L.Trainer, ckpt_path: str | None) -> None:
    """Raise PreflightError for an unwritable checkpoint dir, a broken resume checkpoint or a read-only MLflow DB."""
    dirs = [Path(cb.dirpath) for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    for directory in dirs:
        problem = unwritable(directory)
        if problem:
            raise PreflightError(
                f"checkpoint directory {directory}: {problem}. Give the ModelCheckpoint a writable dirpath "
                "(--trainer.callbacks) or run from a directory you can write"
            )
    candidates = [d / "last.ckpt" for d in dirs] if ckpt_path == "last" else [Path(ckpt_path)] if ckpt_path else []
    for path in candidates:
        if path.is_file() and (problem := checkpoint_problem(path)):
            raise PreflightError(
                f"cannot resume from {path}: it {problem}. Delete it to resume from an earlier checkpoint "
                "in that directory, or start afresh without --ckpt_path"
            )
    for logger in trainer.loggers:
        uri = getattr(logger, "_tracking_uri", None) if isinstance(logger, MLFlowLogger) else None
        if isinstance(uri, str):
            check_tracking_uri(uri)


def check_tracking_uri(uri: str) -> None:
    """PreflightError unless MLflow can write the SQLite database of `uri` (other URIs pass)."""
    database = sqlite_path(uri)
    if database is not None and (problem := tracking_db_problem(database)):
        raise PreflightError(
            f"MLflow database {database} {problem}. Make it writable, point "
            "--trainer.logger.init_args.tracking_uri (or MLFLOW_TRACKING_URI) at a writable sqlite:///<file>, "
            "or pass --trainer.logger=false"
        )
