"""The MLflow tracking store made ready once per process: a SQLite DB is created / migrated under a file lock.

    uri = prepare_tracking_store("sqlite:///mlruns.db")   # safe when N processes start together on no DB
    MlflowClient(uri)                                      # finds the schema at its head: no migration here

MLflow creates and migrates a SQLite DB (alembic, not atomic) the first time a client opens it. Workers that
start together on a fresh `mlruns.db` race inside that migration (`table _alembic_tmp_experiments already
exists`, `expected to match one row ... in 'alembic_version'`) and can leave the DB half-migrated for good.
Here each process opens the store while holding `<db>.lock` (an OS file lock, released if the process dies):
the first one migrates, the others then find every table at the schema head. Other URIs (a tracking server,
PostgreSQL) pass through unchanged: their owner migrates them.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

LOCK_TIMEOUT_S = 600.0
"""How long a process waits for another one's migration (a migration takes seconds)."""


class TrackingStoreError(RuntimeError):
    """The MLflow database cannot be opened or migrated; the message says what to do."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for any other URI or an in-memory DB)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def _open_store(uri: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(uri).search_experiments(max_results=1)  # builds the store: creates / migrates / verifies it


def prepare_tracking_store(uri: str, timeout_s: float = LOCK_TIMEOUT_S) -> str:
    """Create or migrate the SQLite DB behind `uri` once, under `<db>.lock`; returns `uri` (any URI)."""
    path = sqlite_path(uri)
    if path is None:
        return uri
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrackingStoreError(
            f"cannot create the directory {path.parent} of the MLflow database {path} ({error}): point "
            "MLFLOW_TRACKING_URI (or the tracking_uri option) at a writable place, e.g. sqlite:///mlruns.db"
        ) from error
    try:
        lock = FileLock(str(lock_path), timeout=timeout_s)
        with lock:
            _open(uri, path)
    except Timeout as error:
        raise TrackingStoreError(
            f"waited {timeout_s:.0f} s for {lock_path}, held by another process migrating {path}: "
            "let it finish, or stop the process that holds it (the lock is released when it exits)"
        ) from error
    except OSError as error:  # the lock cannot be created: a read-only directory or filesystem
        if not path.is_file():
            raise TrackingStoreError(
                f"cannot create the MLflow database {path} ({error}): make its directory writable, or point "
                "MLFLOW_TRACKING_URI (or the tracking_uri option) at a writable place, e.g. sqlite:///mlruns.db"
            ) from error
        _open(uri, path)  # an existing DB in a read-only directory: nothing to migrate, reading needs no lock
    return uri


def _open(uri: str, path: Path) -> None:
    try:
        _open_store(uri)
    except Exception as error:  # MLflow / SQLAlchemy / alembic errors have no common base
        raise TrackingStoreError(
            f"the MLflow database {path} cannot be opened or migrated to this MLflow's schema: {error}\n"
            f"If an earlier migration was interrupted or the file is damaged: restore it from a backup, or "
            f"move it away (mv {path} {path}.broken) to start a new one; for an old but intact DB, back it up and "
            f"run `mlflow db upgrade {uri}`."
        ) from error
