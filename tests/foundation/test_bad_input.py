"""Bad input fails early with an error that names the problem."""

from __future__ import annotations

import pytest
import torch

from steprune import PRUNERS, PrunedVLM
from tests.inputs import chat_prompt, make_inputs, random_images


@pytest.mark.parametrize("budget", [0, -3])
def test_non_positive_budget(llava, budget):
    model, processor = llava
    with pytest.raises(ValueError, match="budget"):
        PrunedVLM(model, processor, method="uniform", budget=budget)


def test_budget_larger_than_token_count(family):
    model, processor = family
    inputs = make_inputs(processor)
    vlm = PrunedVLM(model, processor, method="uniform", budget=10_000)
    with pytest.raises(ValueError, match=r"budget must be in 1\.\.16"):
        vlm(**inputs)


def test_budget_must_be_int(llava):
    model, processor = llava
    with pytest.raises(TypeError, match="budget"):
        PrunedVLM(model, processor, method="uniform", budget=3.5)


def test_unknown_method_suggests_nearest(llava):
    model, processor = llava
    with pytest.raises(ValueError, match=r"unknown pruning method 'unifrom'.*Did you mean 'uniform'"):
        PrunedVLM(model, processor, method="unifrom", budget=4)
    with pytest.raises(ValueError, match="Known: "):
        PRUNERS.get("no-such-thing-at-all")


def test_image_count_differs_from_prompt_count(family):
    model, processor = family
    inputs = make_inputs(processor)
    vlm = PrunedVLM(model, processor, method="uniform", budget=4)
    if "image_grid_thw" in inputs:
        per = int(inputs["image_grid_thw"][0].prod())
        inputs["pixel_values"] = inputs["pixel_values"][:per]
        inputs["image_grid_thw"] = inputs["image_grid_thw"][:1]
    else:
        inputs["pixel_values"] = inputs["pixel_values"][:1]
    with pytest.raises(ValueError, match="1 images for 2 prompts"):
        vlm(**inputs)


def test_placeholder_count_differs_from_features(family):
    model, processor = family
    inputs = make_inputs(processor)
    image_id = model.config.image_token_id
    ids = inputs["input_ids"].clone()
    first = int((ids[0] == image_id).nonzero()[0])
    ids[0, first] = processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.eos_token)
    vlm = PrunedVLM(model, processor, method="uniform", budget=4)
    with pytest.raises(ValueError, match="image placeholders per sample"):
        vlm(**{**inputs, "input_ids": ids})


def test_prompt_without_image_token(llava):
    model, processor = llava
    inputs = make_inputs(processor)
    image_id = model.config.image_token_id
    ids = inputs["input_ids"].masked_fill(inputs["input_ids"] == image_id, processor.tokenizer.pad_token_id)
    ids[1] = inputs["input_ids"][1]
    vlm = PrunedVLM(model, processor, method="uniform", budget=4)
    with pytest.raises(ValueError, match=r"prompt\(s\) \[0\] contain no image token"):
        vlm(**{**inputs, "input_ids": ids})


def test_wrong_pixel_size_llava(llava):
    model, processor = llava
    inputs = make_inputs(processor)
    inputs["pixel_values"] = torch.zeros(2, 3, 48, 48)
    with pytest.raises(ValueError, match=r"this model takes \(B, 3, 32, 32\)"):
        PrunedVLM(model, processor, method="uniform", budget=4)(**inputs)


def test_wrong_pixel_layout_qwen(qwen):
    model, processor = qwen
    inputs = make_inputs(processor)
    inputs["pixel_values"] = inputs["pixel_values"][:, :10]
    with pytest.raises(ValueError, match="flattened patches"):
        PrunedVLM(model, processor, method="uniform", budget=4)(**inputs)


def test_qwen_images_of_different_sizes(qwen):
    model, processor = qwen
    texts = [chat_prompt(processor, "What colour is it?")] * 2
    images = random_images(1, 32) + random_images(1, 48)
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="different sizes"):
        PrunedVLM(model, processor, method="uniform", budget=4)(**inputs)


def test_unsupported_model_family():
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(
        LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=32)
    )
    with pytest.raises(TypeError, match="LlamaForCausalLM is not supported"):
        PrunedVLM(tiny, None, method="identity")
