"""The Optuna bookkeeping without training: storage URLs, counting, stale trials, re-queueing, heartbeats,
the parent run shared by workers, and command lines checked before any trial runs."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from steprune.sweeps.spec import SweepConfigError, parse_sweep
from steprune.sweeps.study import (
    HOST,
    Heartbeat,
    counts,
    is_stale,
    make_sampler,
    n_counted,
    open_storage,
    open_study,
    public_storage_url,
    rank,
    recover_stale,
)
from steprune.sweeps.tracking import Tracker
from steprune.sweeps.train import TrainRequest, check_args, train_run
from tests.sweeps.conftest import EXPERIMENT


def _spec(url, **changes):
    data = {
        "study_name": "s",
        "storage": url,
        "experiment": EXPERIMENT,
        "n_trials": 3,
        "metric": "val/retention",
        "sampler": {"name": "tpe", "seed": 0},
        "params": {"lam": {"path": "model.lam", "low": 0.1, "high": 1.0}},
        **changes,
    }
    return parse_sweep({k: v for k, v in data.items() if v is not None})


@pytest.fixture(params=["journal", "sqlite"])
def url(request, tmp_path):
    return f"journal://{tmp_path / 'x.journal'}" if request.param == "journal" else f"sqlite:///{tmp_path / 'x.db'}"


def test_storage_urls_open_and_the_study_resumes(url):
    spec = _spec(url, enqueue=[{"lam": 0.5}])
    study = open_study(spec, open_storage(url))
    trial = study.ask()
    assert trial.suggest_float("lam", 0.1, 1.0) == 0.5, "the file's enqueued trial comes first"
    study.tell(trial, 0.7)
    again = open_study(spec, open_storage(url))  # a rerun: loaded, not re-created, nothing enqueued twice
    assert [t.number for t in again.trials] == [0] and again.trials[0].value == 0.7
    with pytest.raises(SweepConfigError, match="optimises"):
        open_study(_spec(url, metric=None, objectives=[{"metric": "val/retention", "direction": "minimize"}]),
                   open_storage(url))  # fmt: skip
    with pytest.raises(SweepConfigError, match="was run on"):
        open_study(_spec(url, metric="val/acc"), open_storage(url))


def test_counting_stale_trials_and_requeue(url):
    storage = open_storage(url)
    study = open_study(_spec(url), storage)
    done = study.ask()
    done.suggest_float("lam", 0.1, 1.0)
    study.tell(done, 0.5)
    failed = study.ask()
    failed.suggest_float("lam", 0.1, 1.0)
    study.tell(failed, state=TrialState.FAIL)
    orphan = study.ask()  # a trial whose worker died: a process of this host that has exited
    lam = orphan.suggest_float("lam", 0.1, 1.0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan.set_user_attr("worker", {"host": HOST, "pid": int(dead.stdout)})
    live = study.ask()  # a trial of a live worker (this process)
    live.set_user_attr("worker", {"host": HOST, "pid": 1})
    live.set_user_attr("heartbeat", time.time())
    frozen = {t.number: t for t in study.get_trials()}
    assert is_stale(frozen[orphan.number], 600) and not is_stale(frozen[live.number], 600)
    assert is_stale(frozen[live.number], 600, now=time.time() + 601), "an old heartbeat is stale (other hosts)"
    assert n_counted(study) == 2 and rank(study, live.number) == 4

    assert recover_stale(study, storage, 600) == [orphan.number]
    assert recover_stale(study, storage, 600) == [], "only once"
    trials = study.get_trials()
    gone = trials[orphan.number]
    assert gone.state == TrialState.FAIL and not counts(gone) and "killed" in gone.user_attrs["error"]
    assert n_counted(study) == 2, "the killed trial does not count; its retry will"
    retry = study.ask()  # the re-queued parameters come back first
    assert retry.suggest_float("lam", 0.1, 1.0) == lam and retry.user_attrs["retry_of"] == orphan.number


def test_heartbeat_stamps_the_trial_from_a_thread(url):
    storage = open_storage(url)
    study = open_study(_spec(url), storage)
    trial = study.ask()
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), trial.number)
    with Heartbeat(storage, trial_id, interval=0.05):
        first = storage.get_trial(trial_id).user_attrs["heartbeat"]
        time.sleep(0.3)
        assert storage.get_trial(trial_id).user_attrs["heartbeat"] > first
    study.tell(trial, 1.0)


def test_sampler_seed_offsets_and_public_url():
    a = make_sampler({"name": "random", "seed": 3}, 0)
    b = make_sampler({"name": "random", "seed": 3}, 0)
    c = make_sampler({"name": "random", "seed": 3}, 1)
    values = []
    for sampler in (a, b, c):
        study = optuna.create_study(sampler=sampler)
        values.append(study.ask().suggest_float("x", 0, 1))
    assert values[0] == values[1] != values[2]
    assert make_sampler({"name": "tpe", "seed": None}, 5)._rng is not None
    assert public_storage_url("postgresql://me:secret@db:5432/optuna") == "postgresql://db:5432/optuna"


def test_workers_share_one_parent_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    one, two = Tracker(uri, "e"), Tracker(uri, "e")
    key = {"sweep.study": "s", "sweep.storage": "sqlite:///x.db"}
    first = one.parent_run(key, "s")
    time.sleep(0.01)  # a second worker that raced: it created its own parent too; both agree on the oldest
    raced = two.client.create_run(two.experiment_id, tags={**key, "sweep.role": "parent"}).info.run_id
    assert two.parent_run(key, "s") == first == one.parent_run(key, "s")
    assert raced != first and len(one.find(key)) == 2  # (the loser deletes its own when it created it itself)
    child = one.child_run(first, "s-trial-0", {"variant": "trial-0"}, {"model.lam": 0.5})
    run = MlflowClient(uri).get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == first and run.data.params["model.lam"] == "0.5"
    assert run.data.tags["git_commit"]


def test_command_lines_are_checked_before_training(tmp_path):
    request = TrainRequest(
        configs=[EXPERIMENT],
        overrides={"model.lam": 0.5},
        seed=0,
        run_id="0" * 32,
        tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
        experiment="e",
        workdir=tmp_path,
        extra_args=["--trainer.max_steps=3"],
    )
    check_args(request)
    request.extra_args = ["--trainer.max_stepz=3"]
    with pytest.raises(ValueError, match="does not parse.*max_stepz"):
        check_args(request)
    request.extra_args, request.overrides = [], {"model.aggregation": "bogus"}
    with pytest.raises(Exception, match="aggregation"):  # a trial's bad value raises (no sys.exit)
        train_run(request)
