"""The MLflow side of sweeps and ablations: one parent run per study (or grid), one nested run per trial.

    tracker = Tracker(tracking_uri=None, experiment="sweeps")          # $MLFLOW_TRACKING_URI or sqlite:///mlruns.db
    parent = tracker.parent_run({"sweep.study": "x", ...}, run_name="x")   # found again on a rerun
    child = tracker.child_run(parent, "x-trial-3", tags={...})          # Lightning's MLFlowLogger gets run_id=child

Nesting is the `mlflow.parentRunId` tag on the child: exactly what `mlflow.start_run(nested=True)` writes
(mlflow/tracking/fluent.py) and what the UI groups runs by. The runs are created with the client, not the
fluent API, so no global "active run" is involved and the trial's Lightning logger writes into the same run.
Every run carries the comparison tags: method, budget, seed, variant, git commit (of the package's checkout,
not the working directory). A SQLite tracking DB is created / migrated once under a file lock before the client
opens it (`steprune.training.tracking_store`), so workers starting together on no DB never race in MLflow's
schema migration.
"""

from __future__ import annotations

import functools
import os
import random
import time
from typing import Any

from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from steprune.training.provenance import commit_label
from steprune.training.tracking_store import prepare_tracking_store

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD of the checkout the `steprune` package is imported from (`-dirty` when tracked files changed), or
    `unknown` outside git: never the working directory's repository (a sweep may run from anywhere)."""
    return commit_label()


def final_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The last validation's metrics as `final/<name>` (val/retention -> final/retention)."""
    return {f"final/{k.split('/', 1)[1]}": v for k, v in metrics.items() if k.startswith("val/")}


def tracking_uri(configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


class Tracker:
    """An MLflow client bound to one tracking URI and one experiment (created when missing)."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        self.uri = prepare_tracking_store(tracking_uri(uri))  # created / migrated once, under a file lock
        self.client = MlflowClient(self.uri)
        self.experiment = experiment
        for attempt in range(5):  # workers starting together may still meet SQLite's write lock
            try:
                found = self.client.get_experiment_by_name(experiment)
                break
            except Exception:
                if attempt == 4:
                    raise
                time.sleep(0.5 + random.random())
        if found is not None and found.lifecycle_stage == "deleted":
            self.client.restore_experiment(found.experiment_id)
        if found is None:
            try:
                self.experiment_id = self.client.create_experiment(experiment)
            except Exception:  # another worker created it first
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            self.experiment_id = found.experiment_id

    def find(self, tags: dict[str, str], parent_id: str | None = None) -> list[Any]:
        """Live runs of the experiment carrying all `tags` (oldest first)."""
        clauses = [f"tags.`{k}` = '{_quote(str(v))}'" for k, v in tags.items()]
        if parent_id is not None:
            clauses.append(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'")
        runs = self.client.search_runs(
            [self.experiment_id], " and ".join(clauses), max_results=5000, order_by=["attributes.start_time ASC"]
        )
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def parent_run(self, key: dict[str, str], run_name: str, tags: dict[str, str] | None = None) -> str:
        """The parent run identified by `key` tags: the existing one (rerun, other workers) or a new one.

        Two workers starting together may both create one; both then pick the oldest and the loser
        deletes its own, so every worker nests its trials under the same parent."""
        key = {**key, "sweep.role": "parent"}
        runs = self.find(key)
        if not runs:
            all_tags = {**(tags or {}), **key, MLFLOW_RUN_NAME: run_name, "git_commit": git_commit()}
            mine = self.client.create_run(self.experiment_id, tags=all_tags, run_name=run_name).info.run_id
            runs = self.find(key)
            chosen = runs[0].info.run_id if runs else mine
            if chosen != mine:
                self.client.delete_run(mine)
            return chosen
        run_id = runs[0].info.run_id
        if runs[0].info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        return run_id

    def child_run(self, parent_id: str, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        tags = {**tags, MLFLOW_PARENT_RUN_ID: parent_id, MLFLOW_RUN_NAME: run_name, "git_commit": git_commit()}
        run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name).info.run_id
        for name, value in params.items():
            self.client.log_param(run_id, name, value)
        return run_id

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        assert status in ("FINISHED", "FAILED", "KILLED"), status
        self.client.set_terminated(run_id, status)

    def log_final(self, run_id: str, metrics: dict[str, float], fallback_step: int) -> None:
        """`final_metrics(metrics)` at the step MLflow holds the last validation at (Lightning logs a validation
        at the step counter of its last optimisation step: one below `global_step`), so each final/* point sits on
        its val/* curve and charts with it; `fallback_step` when no val/ metric was logged."""
        final = final_metrics(metrics)
        step = fallback_step
        if final:
            history = self.client.get_metric_history(run_id, "val/" + next(iter(final)).split("/", 1)[1])
            step = max((m.step for m in history), default=fallback_step)
        self.log_metrics(run_id, final, step=step)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        for name, value in metrics.items():
            self.client.log_metric(run_id, name, float(value), step=step)
