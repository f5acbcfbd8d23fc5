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


@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])
def test_a_decode_step_is_recognised_under_either_cache_keyword(deep, keyword):
    """transformers >= 5.24 hands decoder layers the KV cache as `cache`, 5.0-5.23 as `past_key_values`.

    The session must see a filled cache under either name, whatever release is installed: a decode step read
    as a prefill resets the kept columns and indexes the 1-token step with prefill positions (the 5.24 crash
    'index 16 is out of bounds for dimension 1 with size 1'). The first layer's pre-hook is driven directly
    with each keyword, so this fails without the fix on any installed release.
    """
    from transformers import DynamicCache

    from steprune.backbones.in_llm import InLLMPruning

    model, processor = deep
    decoder = PrunedVLM(model, processor).adapter.decoder
    inputs = make_inputs(processor)
    slots = inputs["input_ids"] == PrunedVLM(model, processor).adapter.image_token_id
    drops = KeepEveryOther((1,), stride=2).layer_drops(None, len(decoder.layers))
    first = decoder.layers[0]
    with InLLMPruning(decoder, drops, slots, inputs["attention_mask"]) as session:
        hidden = torch.zeros(slots.shape[0], slots.shape[1], 8)
        session._step_start(first, (hidden,), {keyword: DynamicCache()})  # empty cache: the prefill
        assert session._prefill and session.full_len == slots.shape[1]
        cache = DynamicCache()
        kv = torch.zeros(slots.shape[0], 1, slots.shape[1], 4)  # (B, KV heads, S, dh): a prefill's keys
        cache.update(kv, kv, 0)
        session._step_start(first, (hidden[:, :1],), {keyword: cache})  # a filled cache: one decode step
        assert not session._prefill, f"a decode step handed the cache as `{keyword}` was taken for a prefill"
        assert session.full_len == slots.shape[1]
