"""The in-LLM hook session: exact when it keeps everything, consistent with the KV cache, batch = alone."""

from __future__ import annotations

import pytest
import torch

from steprune import PrunedVLM, PruneResult
from steprune.backbones.tiny import tiny_llava, tiny_qwen2_5_vl
from steprune.pruners import LayerDrop, PrePrunerBase, PruneContext
from tests.inputs import make_inputs, select_sample


class KeepEveryOther(PrePrunerBase):
    """Test method: before `layer`, keep every `stride`-th alive visual token (query-independent)."""

    name = "every-other-test"

    def __init__(self, layers: tuple[int, ...], stride: int) -> None:
        self.layers, self.stride = layers, stride

    def select(self, ctx: PruneContext) -> PruneResult:
        return PruneResult.keep_all(ctx.batch_size, ctx.num_tokens, ctx.device)

    def layer_drops(self, ctx: PruneContext, num_layers: int) -> list[LayerDrop]:
        def choose(view):
            b, n = view.image_positions.shape
            return torch.arange(0, n, self.stride).expand(b, -1)

        return [LayerDrop(layer, choose) for layer in self.layers]


@pytest.fixture(scope="module", params=["llava", "qwen"])
def deep(request):
    if request.param == "llava":
        return tiny_llava(text_layers=4)
    return tiny_qwen2_5_vl(text_layers=4)


def test_keep_all_drop_equals_unpruned(deep):
    model, processor = deep
    inputs = make_inputs(processor)
    reference = PrunedVLM(model, processor, method="identity")(**inputs).logits
    out = PrunedVLM(model, processor, method=KeepEveryOther((1, 3), stride=1))(**inputs)
    torch.testing.assert_close(out.logits, reference, rtol=1e-5, atol=1e-5)
    assert out.visual_tokens_per_stage == [(0, 16), (1, 16), (3, 16)]


def test_cached_generation_matches_recomputation(deep):
    model, processor = deep
    inputs = make_inputs(processor)
    vlm = PrunedVLM(model, processor, method=KeepEveryOther((1, 2), stride=2))
    out = vlm(**inputs)
    assert out.visual_tokens_per_stage == [(0, 16), (1, 8), (2, 4)]
    new = vlm.generate(**inputs, max_new_tokens=4)
    grown = dict(inputs)
    for step in range(new.shape[1]):
        logits = vlm(**grown).logits[:, -1]
        assert torch.equal(logits.argmax(-1), new[:, step]), f"step {step}: cache and recomputation disagree"
        grown["input_ids"] = torch.cat([grown["input_ids"], new[:, step : step + 1]], dim=1)
        grown["attention_mask"] = torch.cat([grown["attention_mask"], torch.ones_like(new[:, :1])], dim=1)
        if "mm_token_type_ids" in grown:
            grown["mm_token_type_ids"] = torch.cat([grown["mm_token_type_ids"], torch.zeros_like(new[:, :1])], dim=1)


def test_in_llm_batch_equals_each_sample_alone(deep):
    model, processor = deep
    inputs = make_inputs(processor, seed=7)
    vlm = PrunedVLM(model, processor, method=KeepEveryOther((2,), stride=3))
    batch = vlm(**inputs)
    batch_new = vlm.generate(**inputs, max_new_tokens=3)
    for b in range(2):
        single = select_sample(inputs, b)
        torch.testing.assert_close(vlm(**single).logits[0, -1], batch.logits[b, -1], rtol=1e-4, atol=1e-5)
        assert torch.equal(vlm.generate(**single, max_new_tokens=3)[0], batch_new[b])


def test_hooks_are_removed_after_the_call(deep):
    model, processor = deep
    inputs = make_inputs(processor)
    PrunedVLM(model, processor, method=KeepEveryOther((1,), stride=2))(**inputs)
    layers = PrunedVLM(model, processor).adapter.decoder.layers
    assert all(len(layer._forward_pre_hooks) == 0 for layer in layers)


def test_drop_layer_out_of_range(deep):
    model, processor = deep
    with pytest.raises(ValueError, match="outside 1..3"):
        PrunedVLM(model, processor, method=KeepEveryOther((4,), stride=2))(**make_inputs(processor))
