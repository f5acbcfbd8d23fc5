"""The streaming LLaVA-Instruct DataModule on a local fixture in that format (JSON + image folder)."""

from __future__ import annotations

import json

import pytest

from steprune.data.instruct_datamodule import InstructDataModule, open_records
from tests.inputs import write_instruct_fixture


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("instruct")
    records = write_instruct_fixture(root, 5, seed=1)
    records.append(
        {"id": "text-only", "conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "hi"}]}
    )
    (root / "train.json").write_text(json.dumps(records))
    return root


def test_streams_batches_with_answer_labels(fixture_dir):
    dm = InstructDataModule(
        str(fixture_dir / "base"),
        str(fixture_dir / "train.json"),
        val_source=str(fixture_dir / "train.json"),
        image_folder=str(fixture_dir / "images"),
        batch_size=2,
        val_limit=3,
    )
    batches = list(dm.train_dataloader())
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1], "text-only records are skipped"
    assert all((b["labels"] != -100).any(dim=1).all() for b in batches)
    val = list(dm.val_dataloader())
    assert sum(len(b["answers"]) for b in val) == 3 and val[0]["answers"][0] == "red"
    assert "labels" not in val[0]


def test_missing_sources_name_the_problem(fixture_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_records(str(tmp_path / "nope.json"))
    dm = InstructDataModule(
        str(fixture_dir / "base"), str(fixture_dir / "train.json"), batch_size=2, image_folder=str(tmp_path)
    )
    with pytest.raises(FileNotFoundError, match="set image_folder"):
        next(iter(dm.train_dataloader()))
