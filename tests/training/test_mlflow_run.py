"""`MLflowRunResume`: a resume continues the checkpoint's MLflow run, or marks it KILLED when it cannot."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from mlflow import MlflowClient

from steprune.training.mlflow_run import CHECKPOINT_KEY, MLflowRunResume, ResumableMLFlowLogger, resolve_checkpoint


def _setup(tmp_path, logger):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    dead = client.create_run(client.create_experiment("e")).info.run_id  # left RUNNING by a killed process
    (tmp_path / "ck").mkdir()
    torch.save({CHECKPOINT_KEY: {"run_id": dead, "tracking_uri": uri}}, tmp_path / "ck" / "last.ckpt")
    trainer = L.Trainer(logger=logger(uri), callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck")], accelerator="cpu")
    return client, dead, trainer


def test_the_resumable_logger_continues_the_run(tmp_path):
    client, dead, trainer = _setup(tmp_path, lambda uri: ResumableMLFlowLogger(tracking_uri=uri))
    assert resolve_checkpoint(trainer, "last") == tmp_path / "ck" / "last.ckpt"
    MLflowRunResume().attach(trainer, "last")
    assert trainer.logger.run_id == dead and client.get_run(dead).info.status == "RUNNING"


@pytest.mark.parametrize("kind", ["plain", "given", "opted_out"])
def test_a_run_that_cannot_be_continued_is_marked_killed(tmp_path, kind):
    loggers = {
        "plain": lambda uri: MLFlowLogger(tracking_uri=uri),
        "given": lambda uri: ResumableMLFlowLogger(tracking_uri=uri, run_id=_run(uri)),
        "opted_out": lambda uri: ResumableMLFlowLogger(tracking_uri=uri),
    }
    client, dead, trainer = _setup(tmp_path, loggers[kind])
    if kind == "opted_out":
        MLflowRunResume(resume=False).attach(trainer, "last")
        assert client.get_run(dead).info.status == "RUNNING" and trainer.logger.run_id != dead
        return
    with pytest.warns(UserWarning, match=r"not continued: .*A new run starts; the old one is marked KILLED"):
        MLflowRunResume().attach(trainer, "last")
    assert client.get_run(dead).info.status == "KILLED" and trainer.logger.run_id != dead


def _run(uri: str) -> str:
    client = MlflowClient(uri)
    return client.create_run(client.create_experiment("given")).info.run_id
