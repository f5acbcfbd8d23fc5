"""Every registered method through the Pruner contract, on tiny LLaVA and tiny Qwen2.5-VL.

Sorted unique indices; exactly K (<= K for adaptive methods); generation with KV cache; a batch gives
the same selection and outputs as each sample alone.
"""

from __future__ import annotations

import pytest
import torch

from steprune import PRUNERS, PrunedVLM
from steprune.backbones.tiny import tiny_llava, tiny_qwen2_5_vl
from tests.inputs import make_inputs, select_sample

BUDGET = 6


@pytest.fixture(scope="module", params=["llava", "qwen"])
def deep(request):
    """Models with 4 decoder layers (room for in-LLM drops) and N = 16 visual tokens."""
    if request.param == "llava":
        return tiny_llava(text_layers=4)
    return tiny_qwen2_5_vl(text_layers=4)


@pytest.mark.parametrize("method", [m for m in PRUNERS.names() if m != "steprune"])
def test_method_honours_the_contract(deep, method):
    model, processor = deep
    inputs = make_inputs(processor, seed=11)
    vlm = PrunedVLM(model, processor, method=method, budget=BUDGET)
    out = vlm(**inputs)
    result = out.result
    n = 16
    for b in range(result.keep.shape[0]):
        kept = result.keep[b][result.keep_mask[b]]
        assert kept.tolist() == sorted(set(kept.tolist())), "indices must be sorted and unique"
        assert int(kept.min()) >= 0 and int(kept.max()) < n
        assert bool(result.keep_mask[b][: len(kept)].all()), "valid entries come first"
    final = out.visual_tokens_per_stage[-1][1]
    if vlm.pruner.layer_drops(vlm.prepare(**inputs).context, 4):
        assert result.lengths.tolist() == [n, n], "in-LLM methods keep every token before the LLM"
        counts = [k for _, k in out.visual_tokens_per_stage]
        assert counts == sorted(counts, reverse=True) and final <= BUDGET
    elif PRUNERS.get(method).adaptive:
        assert all(1 <= k <= BUDGET for k in result.lengths.tolist())
    elif method != "identity":
        assert result.lengths.tolist() == [BUDGET, BUDGET]
    assert result.selection_flops >= 0.0

    new = vlm.generate(**inputs, max_new_tokens=3)
    assert new.shape == (2, 3)
    if method == "random":
        return  # draws depend on the batch position by design (one seeded stream per batch)
    for b in range(2):
        single = select_sample(inputs, b)
        alone = vlm(**single)
        assert torch.equal(alone.result.keep[0][alone.result.keep_mask[0]], result.keep[b][result.keep_mask[b]]), (
            "batch selection differs from the sample alone"
        )
        torch.testing.assert_close(alone.logits[0, -1], out.logits[b, -1], rtol=1e-4, atol=1e-4)
        assert torch.equal(vlm.generate(**single, max_new_tokens=3)[0], new[b])


@pytest.mark.parametrize("method", [m for m in PRUNERS.names() if PRUNERS.get(m).reads_text and m != "steprune"])
def test_text_free_mode_runs(llava, method):
    model, processor = llava
    inputs = make_inputs(processor)
    out = PrunedVLM(model, processor, method=method, budget=BUDGET, text_free=True)(**inputs)
    assert out.logits.shape[0] == 2
