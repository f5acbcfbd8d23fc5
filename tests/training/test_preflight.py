"""`steprune train fit` names what is wrong with where it writes and what it resumes from, before it trains (#21 8)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from steprune.training.preflight import PreflightError, check_fit_outputs, check_tracking_uri, tracking_db_problem

ROOT = Path(__file__).resolve().parents[2]


def trainer(checkpoints: Path) -> L.Trainer:
    return L.Trainer(callbacks=[ModelCheckpoint(dirpath=checkpoints)], logger=False, enable_progress_bar=False)


def test_zero_byte_last_checkpoint_is_named(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "last.ckpt").write_bytes(b"")
    with pytest.raises(PreflightError, match=r"cannot resume from .*last.ckpt: it is empty \(0 bytes\).*Delete it"):
        check_fit_outputs(trainer(tmp_path / "ckpt"), "last")
    (tmp_path / "ckpt" / "last.ckpt").write_bytes(b"garbage")
    with pytest.raises(PreflightError, match="not a PyTorch checkpoint archive"):
        check_fit_outputs(trainer(tmp_path / "ckpt"), "last")
    check_fit_outputs(trainer(tmp_path / "ckpt"), None)  # not resuming: the file is not read


def test_unwritable_checkpoint_dir_is_named(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(PreflightError, match=r"checkpoint directory .*a-file/ckpt: .*is a file.*writable dirpath"):
        check_fit_outputs(trainer(tmp_path / "a-file" / "ckpt"), None)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files; run as a user to see this case")
def test_read_only_mlflow_db_is_named(tmp_path):
    db = tmp_path / "mlruns.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE t (x INTEGER)")
    db.chmod(0o444)
    with pytest.raises(PreflightError, match=r"MLflow database .*mlruns.db cannot be written \(.*readonly"):
        check_tracking_uri(f"sqlite:///{db}")


def test_mlflow_db_that_cannot_be_opened_or_created_is_named(tmp_path):
    """What root can be shown: a DB path that cannot be opened for writing, and one whose parent is a file."""
    (tmp_path / "mlruns.db").mkdir()
    with pytest.raises(PreflightError, match=r"MLflow database .*mlruns.db cannot be written \(unable to open"):
        check_tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(PreflightError, match=r"mlruns.db cannot be created: .*is a file.*writable sqlite"):
        check_tracking_uri(f"sqlite:///{tmp_path / 'a-file' / 'mlruns.db'}")
    assert tracking_db_problem(tmp_path / "new.db") is None  # created on first use


@pytest.mark.slow
def test_train_fit_names_an_empty_last_checkpoint(tmp_path):
    from steprune.training.cli import train_main
    from tests.inputs import write_micro_base

    base = write_micro_base(tmp_path / "base")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "last.ckpt").write_bytes(b"")
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": str(tmp_path / "ckpt")}}
    ]
    argv = ["fit", "--config", str(ROOT / "experiments" / "stepprune_world.yaml"), f"--model.backbone={base}"]
    argv += ["--trainer.logger=false", f"--trainer.callbacks={json.dumps(callbacks)}", "--ckpt_path", "last"]
    with pytest.raises(PreflightError, match=r"last.ckpt: it is empty \(0 bytes\)"):
        train_main(argv)
