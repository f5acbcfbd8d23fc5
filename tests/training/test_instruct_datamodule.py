"""The streaming LLaVA-Instruct DataModule on a local fixture in that format (JSON + image folder).

A fit stopped in its second epoch and resumed from last.ckpt trains on the very same records, so its selector
equals the uninterrupted run's bit for bit (`torch.equal`); skipped records are counted, never opened.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from datasets import Dataset

from steprune.data.instruct_datamodule import InstructDataModule, RecordStream, open_records
from steprune.training.stepprune_module import StepPruneModule
from tests.inputs import write_instruct_fixture
from tests.training.test_exact_resume import KillAt, Killed, stoppable_trainer


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


def test_skipped_records_are_counted_not_opened(tmp_path):
    """A resumed pass drops the first `skip` image records without opening them (their files may be gone)."""
    turns = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "red"}]
    write_instruct_fixture(tmp_path, 2, seed=4)
    rows = [{"id": "gone", "image": "gone.png", "conversations": turns}]
    rows += [{"id": "text", "image": "", "conversations": turns}]
    rows += [{"id": str(i), "image": f"{i}.png", "conversations": turns} for i in range(2)]
    stream = RecordStream(Dataset.from_list(rows).to_iterable_dataset(), str(tmp_path / "images"))
    stream.set_position(0, 2)
    assert [r["id"] for r in stream] == ["1"], "skip counts image-bearing records only"
    stream.set_position(0, 0)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        list(stream)


STEPS = 7  # 5 image records at batch 2: 3 batches an epoch, so steps 0-2, 3-5 and 6 are epochs 0, 1 and 2


@pytest.fixture(scope="module")
def resume_fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("instruct_resume")
    records = write_instruct_fixture(root, 5, seed=5)
    text_only = {"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "hi"}]}
    (root / "train.json").write_text(json.dumps([*records[:2], text_only, *records[2:]]))
    return root


def fit(root: Path, run: Path, extra: list[L.Callback], ckpt: Path | None = None) -> StepPruneModule:
    L.seed_everything(0)
    module = StepPruneModule(str(root / "base"), t_max=4, warmup_steps=1)
    data = InstructDataModule(
        str(root / "base"),
        str(root / "train.json"),
        val_source=str(root / "train.json"),
        image_folder=str(root / "images"),
        batch_size=2,
        val_limit=2,
        shuffle_buffer=3,
    )
    trainer = stoppable_trainer(
        run,
        STEPS,
        extra,
        val_check_interval=4,  # stop 4 leaves that validation pending: it must not shift the training RNG
        check_val_every_n_epoch=None,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    assert trainer.global_step == STEPS
    return module


@pytest.fixture(scope="module")
def uninterrupted(resume_fixture, tmp_path_factory) -> StepPruneModule:
    return fit(resume_fixture, tmp_path_factory.mktemp("full"), [])


@pytest.mark.parametrize("stop", [4, 3], ids=["inside-epoch-2", "after-epoch-1"])
def test_a_fit_stopped_in_the_second_epoch_resumes_at_the_exact_record(resume_fixture, uninterrupted, tmp_path, stop):
    with pytest.raises(Killed):
        fit(resume_fixture, tmp_path, [KillAt(stop)])
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == stop
    resumed = fit(resume_fixture, tmp_path, [], ckpt=tmp_path / "last.ckpt")
    expected, got = uninterrupted.selector.state_dict(), resumed.selector.state_dict()
    assert expected.keys() == got.keys()
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not differ, f"stopped at step {stop}: {len(differ)} of {len(expected)} selector tensors differ"
