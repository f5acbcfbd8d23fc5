"""The registered `steprune` pruner through `PrunedVLM` on the tiny LLaVA (untrained selector)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from steprune import PRUNERS, PrunedVLM
from steprune.selector.selector import StepPruneSelector
from tests.inputs import make_inputs, select_sample


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread wake-ups that dominate on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_runs_batched_adaptive_and_equal_to_each_sample_alone(llava):
    model, processor = llava
    assert PRUNERS.get("steprune").adaptive and PRUNERS.get("steprune").reads_text
    inputs = make_inputs(processor, seed=3)
    vlm = PrunedVLM(model, processor, method="steprune", budget=4, allow_random=True, t_max=10)
    out = vlm(**inputs)
    result = out.result
    for b in range(2):
        kept = result.keep[b][result.keep_mask[b]].tolist()
        assert kept == sorted(set(kept)) and all(0 <= i < 16 for i in kept) and len(kept) <= 10
        alone = vlm(**select_sample(inputs, b))
        assert alone.result.keep[0][alone.result.keep_mask[0]].tolist() == kept
        torch.testing.assert_close(alone.logits[0, -1], out.logits[b, -1], rtol=1e-4, atol=1e-4)
    assert torch.equal(result.extras["k"], result.lengths)
    assert out.selection_flops > 0
    assert vlm.generate(**inputs, max_new_tokens=2).shape == (2, 2)


def test_text_free_mode_passes_an_empty_prompt(llava):
    model, processor = llava
    inputs = make_inputs(processor, seed=5)
    vlm = PrunedVLM(model, processor, method="steprune", text_free=True, allow_random=True, t_max=10)
    prepared = vlm.prepare(**inputs)
    ctx, selector = prepared.context, vlm.pruner.selector(prepared.context)
    blind = selector.select(ctx.vision_features, ctx.text_embeds[:, :0], ctx.text_mask[:, :0], t_max=10)
    assert torch.equal(prepared.result.keep, blind.keep) and torch.equal(prepared.result.keep_mask, blind.keep_mask)
    steps = [min(int(k) + 1, 10) for k in blind.lengths]
    assert prepared.result.selection_flops == sum(selector.flops(16, 0, t) for t in steps)


def test_weights_file_gives_the_selectors_own_choice(llava, tmp_path):
    model, processor = llava
    inputs = make_inputs(processor, seed=4)
    vlm = PrunedVLM(model, processor, method="steprune", allow_random=True, seed=7)
    ctx = vlm.prepare(**inputs).context
    selector = vlm.pruner.selector(ctx)
    path = tmp_path / "selector.safetensors"
    selector.save(path)
    loaded = PrunedVLM(model, processor, method="steprune", weights=str(path)).prepare(**inputs).result
    direct = selector.select(ctx.vision_features, ctx.text_embeds, ctx.text_mask)
    assert torch.equal(loaded.keep, direct.keep) and torch.equal(loaded.keep_mask, direct.keep_mask)
    expected = sum(
        selector.flops(16, int(length), min(int(k) + 1, 16))
        for k, length in zip(direct.lengths, ctx.text_mask.sum(1), strict=True)
    )
    assert loaded.selection_flops == expected


def test_clear_errors(llava, tmp_path):
    model, processor = llava
    with pytest.raises(ValueError, match="needs trained selector weights.*make train"):
        PRUNERS.create("steprune")
    with pytest.raises(FileNotFoundError, match="absent.safetensors.*make train"):
        PRUNERS.create("steprune", weights=str(tmp_path / "absent.safetensors"))
    path = tmp_path / "other.safetensors"
    StepPruneSelector(d_vision=8, d_text=8, encoder_heads=2, decoder_heads=2, denoiser_heads=2).save(path)
    vlm = PrunedVLM(model, processor, method="steprune", weights=str(path))
    with pytest.raises(ValueError, match="other.safetensors was built for vision width 8"):
        vlm(**make_inputs(processor))
    too_long = PrunedVLM(model, processor, method="steprune", allow_random=True, t_max=17)
    with pytest.raises(ValueError, match="t_max=17 exceeds the 16 visual tokens"):
        too_long(**make_inputs(processor))


def test_selector_keeps_its_dtype_under_a_bf16_context(llava, tmp_path):
    model, processor = llava
    vlm = PrunedVLM(model, processor, method="steprune", allow_random=True)
    ctx = vlm.prepare(**make_inputs(processor)).context
    half = dataclasses.replace(
        ctx,
        image_tokens=ctx.image_tokens.bfloat16(),
        vision_features=ctx.vision_features.bfloat16(),
        text_embeds=ctx.text_embeds.bfloat16(),
    )
    result = vlm.pruner.select(half)
    assert all(p.dtype == torch.float32 for p in vlm.pruner.selector(ctx).parameters()), "never cast in place"
    direct = vlm.pruner.selector(ctx).select(
        half.vision_features.float(), half.text_embeds.float(), half.text_mask, t_max=16
    )
    assert torch.equal(result.keep, direct.keep) and torch.equal(result.keep_mask, direct.keep_mask)
