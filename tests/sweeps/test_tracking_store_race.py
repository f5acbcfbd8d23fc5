"""Several processes open one fresh MLflow SQLite DB at the same moment (slow): the DB ends usable, no run lost.

What a new user's first multi-worker sweep does: N workers start together on no `mlruns.db`. Each process here
imports MLflow first, then waits for a common start time, so all of them reach the schema migration together.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4
ROUNDS = 2

WORKER = textwrap.dedent(
    """
    import sys, time
    from steprune.sweeps.tracking import Tracker
    uri, start, index = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    time.sleep(max(start - time.time(), 0))
    tracker = Tracker(uri, "race")
    run = tracker.child_run("none", f"worker-{index}", {"worker": index}, {"index": index})
    tracker.finish(run)
    """
)


def _race(db: Path) -> list[tuple[int, str]]:
    uri = f"sqlite:///{db}"
    start = f"{time.time() + 12:.3f}"  # after every interpreter has imported MLflow (2 shared CPU cores)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, uri, start, str(i)],
            cwd=db.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(WORKERS)
    ]
    return [(proc.wait(timeout=300), proc.stdout.read()[-2000:]) for proc in procs]


@pytest.mark.slow
def test_workers_racing_on_a_fresh_tracking_db_all_log_and_leave_it_usable(tmp_path):
    for attempt in range(ROUNDS):
        db = tmp_path / f"round{attempt}" / "mlruns.db"
        db.parent.mkdir()
        assert not db.exists()
        results = _race(db)
        failed = [out for rc, out in results if rc != 0]
        assert not failed, f"round {attempt}: {len(failed)} of {WORKERS} workers failed:\n{failed[0]}"
        client = MlflowClient(f"sqlite:///{db}")  # a later open works: the DB is fully migrated
        experiment = client.get_experiment_by_name("race")
        runs = client.search_runs([experiment.experiment_id])
        assert sorted(r.data.tags["worker"] for r in runs) == [str(i) for i in range(WORKERS)]
        assert all(r.info.status == "FINISHED" for r in runs)
