"""Calibration (methods.md §1.8 item 5): the STOP offset hits the mean K* on its split, is saved, and applied."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from steprune import PrunedVLM
from steprune.data.collate import InstructCollator
from steprune.training.calibration import calibrate_stop_offset, encode_split, mean_k
from steprune.training.export import ExportSelector
from steprune.training.stepprune_module import StepPruneModule
from tests.training.test_stepprune_module import backbone, cpu_trainer, loaders, records  # noqa: F401 (fixture)


@pytest.mark.parametrize(("target", "prior"), [(3.0, "none"), (9.5, "none"), (5.0, "coverage")])
def test_calibration_hits_the_target_on_its_split_and_the_pruner_applies_it(backbone, tmp_path, target, prior):  # noqa: F811
    torch.manual_seed(0)
    module = StepPruneModule(backbone, t_max=12, prior=prior)
    split = DataLoader(records(16), batch_size=8, collate_fn=InstructCollator(module.processor, "eval"))
    encoded = encode_split(module, split)
    record = calibrate_stop_offset(module.selector, encoded, target)
    assert abs(record["mean_k"] - target) <= 0.5, record
    assert record["reachable"] and record["samples"] == 16
    assert mean_k(module.selector, encoded, module.selector.stop_offset) == record["mean_k"]
    path = tmp_path / "calibrated.safetensors"
    module.selector.save(path)
    vlm = PrunedVLM(module.vlm, module.processor, method="steprune", weights=str(path))
    ks = [vlm.prepare(**{k: v for k, v in b.items() if k != "answers"}).result.lengths for b in split]
    assert float(torch.cat(ks).float().mean()) == pytest.approx(record["mean_k"])
    assert vlm.pruner._selector.calibration["target_k"] == target


def test_a_target_out_of_reach_takes_the_nearest_end(backbone):  # noqa: F811
    module = StepPruneModule(backbone, t_max=4)
    split = DataLoader(records(4), batch_size=4, collate_fn=InstructCollator(module.processor, "eval"))
    record = calibrate_stop_offset(module.selector, encode_split(module, split), target_k=10.0)
    assert not record["reachable"] and record["mean_k"] == 4.0
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate_stop_offset(module.selector, [], target_k=2.0)


def test_export_calibrates_at_the_end_of_fit(backbone, tmp_path):  # noqa: F811
    train, val = loaders(backbone)
    export = ExportSelector(str(tmp_path / "selector.safetensors"), calibrate_to=2.0)
    cpu_trainer(1, [export], tmp_path, val_batches=1).fit(StepPruneModule(backbone, t_max=8), train, val)
    assert export.calibration is not None and abs(export.calibration["mean_k"] - 2.0) <= 0.5
    from steprune.selector.selector import StepPruneSelector

    saved = StepPruneSelector.load(tmp_path / "selector.safetensors")
    assert saved.stop_offset == export.calibration["stop_offset"] and saved.calibration == export.calibration
