"""An exported selector records the base it was trained on; applying it to another base is refused (or overridden)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from steprune.backbones.fingerprint import BackboneMismatchError, backbone_fingerprint
from steprune.backbones.tiny import tiny_llava
from steprune.pruned_vlm import PrunedVLM
from steprune.pruners.stepprune import untrained_selector
from steprune.training.export import ExportSelector
from steprune.training.stepprune_module import StepPruneModule
from tests.inputs import make_inputs
from tests.training.test_stepprune_module import backbone, cpu_trainer, loaders  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Two saved tiny LLaVAs with the same widths: the base and a "rebuilt" one (other weights)."""
    root = tmp_path_factory.mktemp("bases")
    torch.manual_seed(0)
    model, processor = tiny_llava(text_layers=2)
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)
    model.save_pretrained(root / "rebuilt")
    processor.save_pretrained(root / "rebuilt")
    return root


def _selector_file(bases, tmp_path, trained_on: str | None):
    model = PrunedVLM.from_pretrained(str(bases / "base"), method="identity", budget=None).model
    selector = untrained_selector(model.config.vision_config.hidden_size, model.config.text_config.hidden_size)
    selector.set_stop_offset(-0.5, {"target_k": 4.0, "stop_offset": -0.5})
    if trained_on is not None:
        selector.trained_on = {"backbone": trained_on, "fingerprint": backbone_fingerprint(trained_on)}
    path = tmp_path / "selector.safetensors"
    selector.save(path)
    return path


def test_a_selector_runs_on_its_own_base_and_is_refused_on_a_rebuilt_one(bases, tmp_path):
    path = _selector_file(bases, tmp_path, str(bases / "base"))
    vlm = PrunedVLM.from_pretrained(str(bases / "base"), method="steprune", budget=None, weights=str(path))
    inputs = make_inputs(vlm.processor)
    assert vlm.generate(**inputs, max_new_tokens=2).shape[0] == 2
    with pytest.raises(BackboneMismatchError, match=r"trained on another base.*rebuilt.*`make train`.*allow_backbone"):
        PrunedVLM.from_pretrained(str(bases / "rebuilt"), method="steprune", budget=None, weights=str(path))
    with pytest.warns(UserWarning, match="deliberate transfer"):
        transfer = PrunedVLM.from_pretrained(
            str(bases / "rebuilt"), method="steprune", budget=None, weights=str(path), allow_backbone_mismatch=True
        )
    assert transfer.generate(**inputs, max_new_tokens=2).shape[0] == 2
    with pytest.raises(TypeError, match="allow_backbone_mismatch must be True or False"):
        PrunedVLM.from_pretrained(str(bases / "base"), method="steprune", weights=str(path), allow_backbone_mismatch=1)


def test_an_old_selector_without_a_fingerprint_loads_with_a_warning(bases, tmp_path):
    path = _selector_file(bases, tmp_path, None)
    with pytest.warns(UserWarning, match="records no backbone fingerprint.*re-export it with `make train`"):
        vlm = PrunedVLM.from_pretrained(str(bases / "rebuilt"), method="steprune", budget=None, weights=str(path))
    assert vlm.pruner._own.stop_offset == -0.5 and vlm.pruner._own.calibration["target_k"] == 4.0


def test_the_fingerprint_sits_beside_the_calibration_and_a_bad_one_is_named(bases, tmp_path):
    path = _selector_file(bases, tmp_path, str(bases / "base"))
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["backbone_fingerprint"] == backbone_fingerprint(str(bases / "base"))
    assert json.loads(metadata["config"])["stop_offset"] == -0.5 and json.loads(metadata["calibration"])
    from safetensors.torch import load_file, save_file

    save_file(
        load_file(str(path)), str(tmp_path / "bad.safetensors"), metadata={**metadata, "backbone_fingerprint": "x"}
    )
    with pytest.raises(ValueError, match=r"bad.safetensors: its backbone_fingerprint metadata 'x' is not"):
        PrunedVLM.from_pretrained(str(bases / "base"), method="steprune", weights=str(tmp_path / "bad.safetensors"))


def test_export_records_the_training_base(backbone, tmp_path):  # noqa: F811
    module = StepPruneModule(backbone, t_max=8, warmup_steps=1)
    train, val = loaders(backbone)
    path = tmp_path / "selector.safetensors"
    cpu_trainer(1, [ExportSelector(str(path))], tmp_path).fit(module, train, val)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["backbone"] == backbone and metadata["backbone_fingerprint"] == module.backbone_fingerprint
    assert PrunedVLM.from_pretrained(backbone, method="steprune", budget=None, weights=str(path)).pruner.weights
