"""`prepare_tracking_store`: a fresh SQLite DB is created once under its lock; a broken one is named with a fix."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from steprune.training.tracking_store import TrackingStoreError, prepare_tracking_store, sqlite_path


def test_a_fresh_db_is_created_and_migrated_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'sub' / 'mlruns.db'}"
    assert prepare_tracking_store(uri) == uri
    assert (tmp_path / "sub" / "mlruns.db").is_file() and (tmp_path / "sub" / "mlruns.db.lock").exists()
    assert MlflowClient(uri).get_experiment("0").name == "Default"
    assert prepare_tracking_store(uri) == uri  # again: nothing to do


def test_other_uris_pass_through():
    assert sqlite_path("sqlite:///rel/m.db?mode=ro").as_posix() == "rel/m.db"
    assert sqlite_path("sqlite:////abs/m.db").as_posix() == "/abs/m.db"
    assert sqlite_path("sqlite:///:memory:") is None and sqlite_path("http://127.0.0.1:5000") is None
    assert prepare_tracking_store("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_a_broken_db_says_how_to_recover(tmp_path):
    db = tmp_path / "mlruns.db"
    db.write_bytes(b"not a database" * 100)
    with pytest.raises(TrackingStoreError, match=r"(?s)cannot be opened or migrated.*mv .*mlruns.db.broken"):
        prepare_tracking_store(f"sqlite:///{db}")


def test_an_impossible_location_is_named_before_mlflow_sees_it():
    with pytest.raises(TrackingStoreError, match=r"cannot create the directory /proc/steprune.*MLFLOW_TRACKING_URI"):
        prepare_tracking_store("sqlite:////proc/steprune/mlruns.db")
