"""Inputs that used to give garbage, or fail deep inside the model, are refused at the boundary (#21 item 9)."""

from __future__ import annotations

import pytest
import torch

from steprune import PRUNERS, PrunedVLM
from steprune.backbones.tiny import tiny_llava
from steprune.pruners.stepprune import untrained_selector
from steprune.selector.selector import StepPruneSelector
from tests.inputs import make_inputs


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_pixels_are_refused_in_forward_and_generate(family, value):
    model, processor = family
    inputs = make_inputs(processor)
    inputs["pixel_values"] = inputs["pixel_values"].clone()
    inputs["pixel_values"].view(-1)[5] = value
    vlm = PrunedVLM(model, processor, method="mmtok", budget=4)
    with pytest.raises(ValueError, match=r"pixel_values hold \d+ NaN and \d+ infinite values"):
        vlm(**inputs)
    with pytest.raises(ValueError, match="check how the images were loaded"):
        vlm.generate(**inputs, max_new_tokens=2)


def test_selector_with_nan_weights_is_refused_at_load(tmp_path):
    selector = untrained_selector(8, 12)
    with torch.no_grad():
        next(selector.parameters()).view(-1)[0] = float("nan")
    path = tmp_path / "selector.safetensors"
    selector.save(path)
    with pytest.raises(ValueError, match=r"NaN or infinite weights in 1 tensor\(s\).*retrain it"):
        StepPruneSelector.load(path)
    with pytest.raises(ValueError, match="NaN or infinite weights"):
        PRUNERS.create("steprune", weights=str(path))


@pytest.mark.parametrize("rows", [[0, 1], [1]])
def test_all_zero_attention_mask_is_reported_as_such(family, rows):
    model, processor = family
    inputs = make_inputs(processor)
    inputs["attention_mask"] = inputs["attention_mask"].clone()
    inputs["attention_mask"][rows] = 0
    vlm = PrunedVLM(model, processor, method="uniform", budget=4)
    with pytest.raises(ValueError, match=rf"attention_mask is all zeros for sample\(s\) \{rows}"):
        vlm(**inputs)


def test_mask_hiding_the_image_is_reported(llava):
    model, processor = llava
    inputs = make_inputs(processor)
    inputs["attention_mask"] = inputs["attention_mask"].masked_fill(
        inputs["input_ids"] == model.config.image_token_id, 0
    )
    with pytest.raises(ValueError, match="attention_mask is 0 on image placeholder tokens"):
        PrunedVLM(model, processor, method="uniform", budget=4)(**inputs)


def test_one_channel_image_is_refused_before_clip(llava):
    model, processor = llava
    inputs = make_inputs(processor)
    inputs["pixel_values"] = inputs["pixel_values"][:, :1]  # (B, 1, H, W): a grey image that skipped the processor
    with pytest.raises(
        ValueError, match=r"shape \(2, 1, 32, 32\): this model takes \(B, 3, 32, 32\); convert images to RGB"
    ):
        PrunedVLM(model, processor, method="uniform", budget=4)(**inputs)


def test_empty_batch_is_refused_before_the_vision_tower(family):
    model, processor = family
    inputs = {k: v[:0] for k, v in make_inputs(processor).items()}
    with pytest.raises(ValueError, match="empty batch"):
        PrunedVLM(model, processor, method="uniform", budget=4).generate(**inputs, max_new_tokens=2)


@pytest.mark.parametrize("method", ["fastv", "dart"])
def test_drop_layer_beyond_the_llm_is_refused_not_clamped(method):
    with pytest.raises(ValueError, match=r"layer=99 is outside 1\.\.31"):
        PRUNERS.create(method, layer=99)
    model, processor = tiny_llava(text_layers=2)
    vlm = PrunedVLM(model, processor, method=method, budget=4, layer=5, reference_layers=None)
    with pytest.raises(ValueError, match=r"layer=5 is outside 1\.\.1 for this 2-layer LLM"):
        vlm(**make_inputs(processor))


def test_seed_must_be_an_int(llava):
    model, processor = llava
    with pytest.raises(TypeError, match="seed must be an int, got str 'x'"):
        PrunedVLM(model, processor, method="random", budget=4, seed="x")
