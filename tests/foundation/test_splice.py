"""Pruning to K: exactly K placeholders per sample, text untouched, positions consistent, ragged = alone."""

from __future__ import annotations

import pytest
import torch

from steprune import PrunedVLM, PruneResult
from steprune.pruners import PrePrunerBase, PruneContext
from tests.inputs import make_inputs, select_sample


class ThresholdPruner(PrePrunerBase):
    """Keeps the tokens whose score is above a fixed threshold (and the best one): K depends on the sample."""

    name = "threshold-test"
    adaptive = True

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def select(self, ctx: PruneContext) -> PruneResult:
        score = ctx.image_tokens[..., 0] + ctx.image_tokens[..., 1:].sum(-1) * 1e-3  # (B, N)
        best = score == score.max(dim=1, keepdim=True).values
        return PruneResult.from_mask((score > self.threshold) | best)


@pytest.mark.parametrize("policy", ["keep_original", "contiguous"])
def test_exactly_k_placeholders_and_text_untouched(family, policy):
    model, processor = family
    inputs = make_inputs(processor)
    image_id = model.config.image_token_id
    vlm = PrunedVLM(model, processor, method="uniform", budget=5, position_policy=policy)
    prepared = vlm.prepare(**inputs)
    spliced = prepared.spliced
    assert spliced.image_slots.sum(1).tolist() == [5, 5]
    assert ((spliced.input_ids == image_id) & spliced.attention_mask.bool()).sum(1).tolist() == [5, 5]
    for b in range(2):
        original = inputs["input_ids"][b][inputs["attention_mask"][b].bool()]
        new = spliced.input_ids[b][spliced.attention_mask[b].bool()]
        assert torch.equal(original[original != image_id], new[new != image_id]), "text tokens must be untouched"
        embeds = spliced.inputs_embeds[b][spliced.attention_mask[b].bool()]
        text_rows = embeds[new != image_id]
        assert torch.allclose(text_rows, model.get_input_embeddings()(new[new != image_id]))
    positions = spliced.position_ids if spliced.position_ids.dim() == 2 else spliced.position_ids[0]
    for b in range(2):
        real = positions[b][spliced.attention_mask[b].bool()]
        assert bool((real[1:] > real[:-1]).all()) or policy == "keep_original" and bool((real[1:] >= real[:-1]).all())
        if policy == "contiguous":
            assert real.tolist() == list(range(len(real)))


def test_keep_original_positions_are_the_full_sequence_positions(llava):
    model, processor = llava
    inputs = make_inputs(processor)
    vlm = PrunedVLM(model, processor, method="uniform", budget=4, position_policy="keep_original")
    spliced = vlm.prepare(**inputs).spliced
    full = inputs["attention_mask"].cumsum(1) - 1
    image_id = model.config.image_token_id
    for b in range(2):
        real = spliced.attention_mask[b].bool()
        kept_ids = spliced.input_ids[b][real]
        kept_pos = spliced.position_ids[b][real]
        # the last text token keeps its original position, so decoding continues at the same place
        assert int(kept_pos[-1]) == int(full[b, -1])
        text_after = kept_ids != image_id
        assert int(text_after.sum()) == int(
            ((inputs["input_ids"][b] != image_id) & inputs["attention_mask"][b].bool()).sum()
        )


def test_qwen_keep_original_uses_mrope_positions(qwen):
    model, processor = qwen
    inputs = make_inputs(processor)
    full, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    vlm = PrunedVLM(model, processor, method="uniform", budget=4)
    prepared = vlm.prepare(**inputs)
    spliced = prepared.spliced
    assert spliced.position_ids.shape[0] == 3
    image_id = model.config.image_token_id
    for b in range(2):
        img_full = full[:, b][:, inputs["input_ids"][b] == image_id]  # (3, N)
        keep = prepared.result.keep[b]
        img_new = spliced.position_ids[:, b][:, spliced.image_slots[b]]
        assert torch.equal(img_new, img_full[:, keep])
        assert int(spliced.position_ids[:, b, -1].max()) == int(full[:, b, -1].max())


@pytest.mark.parametrize("policy", ["keep_original", "contiguous"])
def test_ragged_batch_equals_each_sample_alone(family, policy):
    model, processor = family
    inputs = make_inputs(processor, seed=5)
    vlm = PrunedVLM(model, processor, method=ThresholdPruner(0.0), position_policy=policy)
    batch = vlm(**inputs)
    lengths = batch.result.lengths.tolist()
    assert lengths[0] != lengths[1], f"the test needs different K per sample, got {lengths}"
    batch_new = vlm.generate(**inputs, max_new_tokens=4)
    for b in range(2):
        single = select_sample(inputs, b)
        out = vlm(**single)
        assert out.result.lengths.tolist() == [lengths[b]]
        torch.testing.assert_close(out.logits[0, -1], batch.logits[b, -1], rtol=1e-4, atol=1e-5)
        assert torch.equal(vlm.generate(**single, max_new_tokens=4)[0], batch_new[b])


class KeepFirstOrNothing(PrePrunerBase):
    """Sample 0 keeps tokens {0, 3}; sample 1 keeps token 0 only: padding entries point at index 0 too."""

    name = "first-test"
    adaptive = True

    def select(self, ctx: PruneContext) -> PruneResult:
        chosen = torch.zeros(ctx.batch_size, ctx.num_tokens, dtype=torch.bool)
        chosen[:, 0] = True
        chosen[0, 3] = True
        return PruneResult.from_mask(chosen)


def test_padding_entries_never_drop_a_kept_token_zero(llava):
    model, processor = llava
    inputs = make_inputs(processor)
    prepared = PrunedVLM(model, processor, method=KeepFirstOrNothing())(**inputs)
    assert prepared.result.lengths.tolist() == [2, 1]
    spliced = PrunedVLM(model, processor, method=KeepFirstOrNothing()).prepare(**inputs).spliced
    assert spliced.image_slots.sum(1).tolist() == [2, 1]
