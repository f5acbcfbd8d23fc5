"""The Optuna side of a sweep: storage URLs, the study, stale-trial recovery, heartbeats, trial counting.

    storage = open_storage("journal:///shared/sweeps/x.journal")     # or sqlite:///optuna.db, postgresql://...
    study = open_study(spec, storage)                                 # create or load (load_if_exists)
    recover_stale(study, storage, stale_after_s=600)                  # RUNNING trials of dead workers -> FAIL + requeue

Counting (what makes a rerun continue without losing or double-counting a trial): a trial counts toward
`n_trials` when it is COMPLETE, PRUNED or FAIL, except a FAIL that was re-queued (a killed or surplus
trial whose parameters went back into the queue: its retry counts instead). A RUNNING trial belongs to a
live worker unless its worker process on this host is gone or its heartbeat is older than
`stale_after_s` (another host); such a trial is marked FAIL ("killed") and its parameters are enqueued.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from steprune.sweeps.spec import SweepConfigError, SweepSpec, optuna_class

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
HOST = socket.gethostname()


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """`sqlite:///file.db` | `postgresql://...` | `mysql://...` | `journal:///abs/path` or `journal://rel/path`."""
    if url.startswith("journal://"):
        path = Path(url[len("journal://") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        # several processes on one SQLite file: wait for the write lock instead of failing at once
        return _rdb(url, {"connect_args": {"timeout": 60}})
    return _rdb(url, {"pool_pre_ping": True})


def _rdb(url: str, engine_kwargs: dict[str, Any], attempts: int = 5) -> optuna.storages.RDBStorage:
    """RDBStorage; workers that start together race to create the tables, and the losers simply retry."""
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def public_storage_url(url: str) -> str:
    """The URL without credentials (for tags and logs)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.rsplit('@', 1)[1]}"
    return url


def make_sampler(config: dict[str, Any], offset: int = 0) -> optuna.samplers.BaseSampler:
    """The file's sampler; a seeded one gets `seed + offset` (the runner offsets by the trials already asked
    and the worker index, so a resumed or second worker does not replay the same random start-up points)."""
    kwargs = {k: v for k, v in config.items() if k != "name"}
    if kwargs.get("seed") is not None:
        kwargs["seed"] = int(kwargs["seed"]) + offset
    return optuna_class(config["name"])(**kwargs)


def make_pruner(config: dict[str, Any]) -> optuna.pruners.BasePruner:
    if config["name"] == "none":
        return optuna.pruners.NopPruner()
    return optuna_class(config["name"])(**{k: v for k, v in config.items() if k != "name"})


def open_study(spec: SweepSpec, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study or load it (same name, same storage); the directions must match the file's."""
    directions = [o.direction for o in spec.objectives]
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=spec.study_name,
            directions=directions,
            sampler=make_sampler(spec.sampler),
            pruner=make_pruner(spec.pruner),
            load_if_exists=True,
        )
    except ValueError as error:  # optuna: directions differ from the stored study's
        message = f"{spec.source}: study {spec.study_name!r} exists with other objectives: {error}"
        raise SweepConfigError(message) from error
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise SweepConfigError(
            f"{spec.source}: study {spec.study_name!r} in this storage optimises {stored}, the file says "
            f"{directions}; use another study_name or storage"
        )
    metrics = [o.metric for o in spec.objectives]
    if "objectives" not in study.user_attrs:
        study.set_user_attr("objectives", metrics)
    elif study.user_attrs["objectives"] != metrics:
        raise SweepConfigError(
            f"{spec.source}: study {spec.study_name!r} was run on {study.user_attrs['objectives']}, the file "
            f"says {metrics}; use another study_name"
        )
    if study.metric_names != metrics:  # optuna-dashboard labels the objectives by these (else "Objective 0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names(metrics)
    if spec.enqueue and not study.user_attrs.get("enqueued"):
        study.set_user_attr("enqueued", True)
        for params in spec.enqueue:
            study.enqueue_trial(params, user_attrs={"enqueued": True}, skip_if_exists=True)
    return study


def counts(trial: FrozenTrial) -> bool:
    """Does this trial count toward n_trials? (finished, and not a failure whose parameters were re-queued)"""
    return trial.state in FINISHED and not trial.user_attrs.get("requeued", False)


def n_counted(study: optuna.Study) -> int:
    return sum(counts(t) for t in study.get_trials(deepcopy=False))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: FrozenTrial, stale_after_s: float, now: float | None = None) -> bool:
    """A RUNNING trial whose worker is gone: its process on this host has exited, or its heartbeat is old."""
    if trial.state != TrialState.RUNNING:
        return False
    worker = trial.user_attrs.get("worker") or {}
    pid = worker.get("pid")
    if worker.get("host") == HOST and pid not in (None, os.getpid()) and not _pid_alive(int(pid)):
        return True
    beat = trial.user_attrs.get("heartbeat")
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    return beat is not None and (now or time.time()) - float(beat) > stale_after_s


def requeue(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    trial: FrozenTrial,
    reason: str,
    enqueue_again: bool = True,
) -> bool:
    """Mark `trial` FAIL with `reason` (not counted) and enqueue its parameters again; False when another
    worker got there first."""
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    try:
        storage.set_trial_user_attr(trial_id, "error", reason)
        storage.set_trial_user_attr(trial_id, "requeued", True)
        if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    retry_of = trial.user_attrs.get("retry_of", trial.number)
    attrs = {"retry_of": retry_of, **{k: trial.user_attrs[k] for k in ("enqueued",) if k in trial.user_attrs}}
    if enqueue_again and trial.params:
        study.enqueue_trial(trial.params, user_attrs=attrs)
    return True


def recover_stale(study: optuna.Study, storage: optuna.storages.BaseStorage, stale_after_s: float) -> list[int]:
    """FAIL + re-queue every RUNNING trial whose worker is gone; the numbers recovered."""
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(trial, stale_after_s):
            worker = trial.user_attrs.get("worker", {})
            if requeue(study, storage, trial, f"killed: worker {worker} stopped during the trial; re-queued"):
                recovered.append(trial.number)
    return recovered


def rank(study: optuna.Study, number: int) -> int:
    """How many trials up to and including `number` hold a place in the n_trials budget (counted or running)."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.number <= number and (counts(t) or t.state == TrialState.RUNNING)
    )


class Heartbeat:
    """While a trial runs, stamp `heartbeat` (unix time) on it every `interval` s from a daemon thread."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        with contextlib.suppress(UpdateFinishedTrialError):
            self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a missed beat is not an error; staleness needs many
                self._beat()

    def __enter__(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
