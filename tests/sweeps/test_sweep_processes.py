"""Sweeps as real processes (slow): kill a worker mid-trial and resume; two workers on one storage."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from steprune.sweeps.runner import run_sweep
from steprune.sweeps.study import counts, open_storage
from tests.sweeps.conftest import ROOT, write_micro_sweep

pytestmark = pytest.mark.slow


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }


def _worker(config: Path, tmp_path: Path, *args: str) -> subprocess.Popen:
    log = open(tmp_path / f"worker{'-'.join(args) or '0'}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "steprune.sweeps.runner", "--config", str(config), *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()
    except KeyError:  # not created yet
        return []


def _wait(proc: subprocess.Popen, condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the worker exited (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_kill_after_the_first_trial_and_resume(micro_base_dir, tmp_path, monkeypatch):
    config = write_micro_sweep(
        tmp_path, micro_base_dir, name="killed", n_trials=3, steps=6, val_every=3, pruner={"name": "none"}
    )
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc = _worker(config, tmp_path)

    def first_done_second_running() -> bool:
        trials = _trials(url, "killed")
        return any(t.state == TrialState.COMPLETE for t in trials) and any(
            t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs for t in trials
        )

    try:
        _wait(proc, first_done_second_running, 300, "trial 0 finished and trial 1 started")
    finally:
        proc.kill()
        proc.wait()
    before = _trials(url, "killed")
    killed = [t for t in before if t.state == TrialState.RUNNING]
    assert len(killed) == 1, [t.state for t in before]
    killed = killed[0]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    summary = run_sweep(config)  # the same command again
    assert summary["recovered"] == [killed.number]
    trials = _trials(url, "killed")
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(numbers))) and len(numbers) == 4, "3 counted + the killed one"
    assert sum(counts(t) for t in trials) == 3 and summary["counted"] == 3
    gone = trials[killed.number]
    assert gone.state == TrialState.FAIL and gone.user_attrs["requeued"] and "killed" in gone.user_attrs["error"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params and retry[0].state == TrialState.COMPLETE
    assert all(t.state == TrialState.COMPLETE for t in trials if t.number != killed.number)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    experiment = client.get_experiment_by_name("sweeps-killed")
    parents = client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert len(children) == 4


@pytest.mark.parametrize("backend", ["journal", "sqlite"])
def test_two_workers_share_one_study(micro_base_dir, tmp_path, backend):
    url = f"journal://{tmp_path / 'study.journal'}" if backend == "journal" else f"sqlite:///{tmp_path / 'optuna.db'}"
    n = 6
    config = write_micro_sweep(
        tmp_path, micro_base_dir, name="workers", n_trials=n, storage=url, pruner={"name": "none"}, steps=8
    )
    assert not (tmp_path / "mlruns.db").exists()  # a first multi-worker sweep: both race to create the tracking DB
    first = _worker(config, tmp_path, "--worker", "0")  # both start together: one creates the study, one loads it
    second = _worker(config, tmp_path, "--worker", "1")
    for proc in (first, second):
        assert proc.wait(timeout=600) == 0, (tmp_path / "worker--worker-0.log").read_text()[-3000:]
    trials = _trials(url, "workers")
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers), "no duplicated trial numbers"
    assert sum(counts(t) for t in trials) == n and all(t.state == TrialState.COMPLETE for t in trials if counts(t))
    pids = {t.user_attrs["worker"]["pid"] for t in trials if counts(t)}
    indices = {t.user_attrs["worker"]["index"] for t in trials if counts(t)}
    assert len(pids) == 2 and indices == {0, 1}, "both workers ran trials"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("sweeps-workers")
    parents = client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'parent'")
    assert len(parents) == 1, "both workers nest under one parent run"
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert sorted(int(r.data.tags["sweep.trial"]) for r in children) == sorted(t.number for t in trials if counts(t))
