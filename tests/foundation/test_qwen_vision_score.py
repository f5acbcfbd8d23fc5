"""Qwen2.5-VL's CLS-less score (`QwenVisionAccess`): the HoloV authors' last-block received attention, pooled over
each 2x2 merge group, computed explicitly (the tower keeps SDPA) == a naive per-image, per-head reference."""

from __future__ import annotations

import pytest
import torch
from transformers.vision_utils import get_vision_window_index

from steprune import PrunedVLM
from steprune.backbones.vision_access import QwenVisionAccess, window_order
from steprune.eval.flops import measured_forward_flops
from steprune.pruners.visionzip import access_flops
from tests.inputs import make_inputs
from tests.qwen_reference import authors_qwen_score


@pytest.mark.parametrize("grid", [[[1, 8, 8]], [[1, 8, 8], [1, 8, 8]], [[1, 12, 10]], [[2, 6, 14]], [[1, 4, 4]]])
@pytest.mark.parametrize("window", [16, 32, 112])
def test_window_order_is_the_towers(grid, window):
    grid = torch.tensor(grid)
    expected, _ = get_vision_window_index(grid, spatial_merge_size=2, window_size=window, patch_size=4)
    assert torch.equal(window_order(grid, 2, window, 4), expected)


def test_score_matches_the_naive_authors_score(qwen):
    model, processor = qwen
    inputs = make_inputs(processor)
    access = PrunedVLM(model, processor, method="holov", budget=6).prepare(**inputs).context.vision
    assert isinstance(access, QwenVisionAccess) and not access.has_cls
    expected = authors_qwen_score(model, inputs)  # (B, N)
    torch.testing.assert_close(access.cls_attention(layer=-2, reduce="mean"), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(access.cls_attention(layer=-1, reduce="mean"), expected, atol=1e-6, rtol=1e-5)
    heads = model.config.vision_config.num_heads
    torch.testing.assert_close(access.cls_attention(reduce="sum"), heads * expected, atol=1e-6, rtol=1e-5)
    assert model.config.vision_config._attn_implementation == "sdpa"  # nothing switched to eager
    assert not model.model.visual.blocks[-1]._forward_pre_hooks  # the capture hook is gone


def test_score_flops_equal_flop_counter(qwen):
    model, processor = qwen
    access = PrunedVLM(model, processor, method="holov", budget=6).prepare(**make_inputs(processor)).context.vision
    fresh = QwenVisionAccess(
        access.tokens, access.block, access.block_input, access.cu_seqlens, access.position_embeddings, access.order
    )
    measured = measured_forward_flops(lambda: fresh.cls_attention())
    assert access_flops(fresh, -2, cls=True) == measured
    assert access_flops(fresh, -2, keys=True) == 0.0
