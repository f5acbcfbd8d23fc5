"""PruMerge+: adaptive keep + merge == a naive loop (numpy quartiles), ragged K, eager CLS attention, generate."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from steprune.backbones.tiny import tiny_llava, tiny_qwen2_5_vl
from steprune.backbones.vision_access import ClipVisionAccess
from steprune.eval.flops import measured_forward_flops
from steprune.pruned_vlm import PrunedVLM
from steprune.pruners import PRUNERS, PruneContext
from steprune.pruners.prumerge_plus import PruMergePlusPruner
from tests.qwen_reference import authors_qwen_score

QUESTIONS = ("What colour is it?", "How many objects are there in the whole scene today?")


def make_inputs(processor, size: int, questions=QUESTIONS, seed: int = 0):
    """A left-padded batch of 2 (prompts of different lengths), one random image per prompt."""
    rng = np.random.default_rng(seed)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in questions]
    msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in msgs]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def naive_prumerge_plus(attn, keys, tokens, budget, neighbours=32):
    """Per sample, plain Python: attn (B, N) scores, keys (B, N, Dk) without CLS, tokens (B, N, D).

    Returns [(sorted kept indices, {index: merged feature})] per sample.
    """
    out = []
    for b in range(attn.shape[0]):
        a = [float(v) for v in attn[b]]
        n = len(a)
        q1, q3 = np.percentile(np.array(a), [25, 75])
        outliers = [i for i in range(n) if a[i] > q3 + 1.5 * (q3 - q1)]
        if len(outliers) >= budget:
            kept = sorted(sorted(range(n), key=lambda i: (-a[i], i))[:budget])
        else:  # the authors' stride; widened one step at a time only while their set exceeds the budget
            stride = max((n // max(len(outliers), 1)) // 3, 1)
            while len(set(outliers) | set(range(0, n, stride))) > budget:
                stride += 1
            kept = sorted(set(outliers) | set(range(0, n, stride)))
        assert len(kept) <= budget
        total = sum(a)
        merged = {}
        for i in kept:
            sims = {j: float(F.cosine_similarity(keys[b, i], keys[b, j], dim=0)) for j in range(n) if j != i}
            peers = sorted(sims, key=lambda j: (-sims[j], j))[: min(neighbours, n - 1)]
            merged[i] = tokens[b, i] + sum(a[j] / total * tokens[b, j] for j in peers)
        out.append((kept, merged))
    return out


def assert_matches(result, ref):
    for b, (kept, merged) in enumerate(ref):
        got = result.keep[b][result.keep_mask[b]].tolist()
        assert got == kept
        for slot, i in enumerate(got):
            torch.testing.assert_close(result.merged[b, slot], merged[i].to(result.merged.dtype), atol=1e-5, rtol=1e-5)
        assert bool((result.merged[b, len(got) :] == 0).all())


class FakeAccess:
    """Given CLS attention (B, N) and keys (B, H, 1 + N, dh), as a CLIP tower would return them."""

    has_cls = True

    def __init__(self, attn, keys) -> None:
        self._attn, self._keys = attn, keys

    def cls_attention(self, layer=-2, reduce="sum"):
        assert (layer, reduce) == (-1, "mean")
        return self._attn

    def keys(self, layer):
        assert layer == -1
        return self._keys


def fake_context(budget, n=64, d=8):
    g = torch.Generator().manual_seed(0)
    attn = torch.rand(2, n, generator=g) * 0.01
    attn[0, [5, 40, 41]] += 0.5  # 3 outliers
    attn[1, [1, 2, 3, 9, 20, 30, 50, 63]] += torch.linspace(0.2, 0.9, 8)  # 8 outliers
    attn[0, 7] = attn[0, 8]  # a tie
    attn = attn / attn.sum(dim=1, keepdim=True) * 0.9  # CLS keeps 10% on itself
    keys = torch.randn(2, 2, 1 + n, 4, generator=g)
    tokens = torch.randn(2, n, d, generator=g)
    ctx = PruneContext(
        image_tokens=tokens,
        vision_features=tokens,
        text_embeds=torch.zeros(2, 3, d),
        text_mask=torch.ones(2, 3, dtype=torch.bool),
        budget=budget,
        grid=(8, 8),
        vision=FakeAccess(attn, keys),
    )
    return ctx, attn, keys[:, :, 1:].transpose(1, 2).flatten(2), tokens


@pytest.mark.parametrize("budget", [40, 12, 5])
def test_matches_naive_with_ragged_k(budget):
    ctx, attn, keys, tokens = fake_context(budget)
    result = PruMergePlusPruner().select(ctx)
    ref = naive_prumerge_plus(attn, keys, tokens, budget)
    assert_matches(result, ref)
    assert result.extras["num_outliers"].tolist() == [3, 8]
    if budget == 40:  # 3 outliers + stride 7 vs 8 outliers + stride 2 (room-capped): different K
        assert result.lengths.tolist() == [len(ref[0][0]), len(ref[1][0])]
        assert result.lengths[0] != result.lengths[1]
    assert bool((result.lengths <= budget).all())
    assert PruMergePlusPruner.adaptive and not PruMergePlusPruner.reads_text
    assert result.selection_flops > 0


def test_budget_n_keeps_what_the_authors_keep():
    """Many outliers make the authors' stride 1 (N // n_out // 3 = 1): at budget = N every token is kept (the old
    cap widened the stride to ceil(N / (N - n_out)) = 2 and dropped half the uniform tokens)."""
    n = 24
    attn = torch.zeros(1, n)
    attn[0, [2, 7, 11, 13, 19]] = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])  # 5 outliers over IQR 0; step 4 -> stride 1
    keys = torch.randn(1, 1, 1 + n, 4, generator=torch.Generator().manual_seed(0))
    tokens = torch.randn(1, n, 8, generator=torch.Generator().manual_seed(1))
    for budget in (n, 23, 17):
        ctx = PruneContext(
            image_tokens=tokens,
            vision_features=tokens,
            text_embeds=torch.zeros(1, 1, 8),
            text_mask=torch.ones(1, 1, dtype=torch.bool),
            budget=budget,
            grid=(4, 6),
            vision=FakeAccess(attn, keys),
        )
        result = PruMergePlusPruner(neighbours=3).select(ctx)
        ref = naive_prumerge_plus(attn, keys[:, :, 1:].transpose(1, 2).flatten(2), tokens, budget, neighbours=3)
        assert_matches(result, ref)
        if budget == n:
            assert result.keep_mask.sum().item() == n
        else:  # 23 and 17: stride 2, the 12 even indices + the 4 odd outliers (7, 11, 13, 19)
            assert result.keep_mask.sum().item() == 16


@pytest.fixture(scope="module")
def llava64():
    return tiny_llava(image_size=64)  # N = 64


def test_selection_flops_equal_flop_counter(llava64):
    """Reported FLOPs == FlopCounterMode's count of `select` on an uncached access (the last layer's q/k projected
    once, the CLS row, the neighbour similarities) + the weighted peer sums it adds by hand (not matmuls)."""
    model, processor = llava64
    ctx = PrunedVLM(model, processor, method="prumerge_plus", budget=32).prepare(**make_inputs(processor, 64)).context
    ctx = dataclasses.replace(ctx, vision=ClipVisionAccess(ctx.vision.hidden_states, ctx.vision.layers))
    results = []
    measured = measured_forward_flops(lambda: results.append(PruMergePlusPruner().select(ctx)))
    b, n, d = ctx.image_tokens.shape
    peer_sums = 2.0 * b * results[0].keep.shape[1] * min(32, n - 1) * d
    assert results[0].selection_flops == measured + peer_sums


def test_llava_matches_naive_on_eager_cls_attention(llava64):
    model, processor = llava64
    batch = make_inputs(processor, 64)
    vlm = PrunedVLM(model, processor, method="prumerge_plus", budget=32)
    prepared = vlm.prepare(**batch)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        vt = eager.model.vision_tower(batch["pixel_values"], output_hidden_states=True, output_attentions=True)
        attn = vt.attentions[-1][:, :, 0, 1:].mean(dim=1)  # (B, N) CLS row, mean over heads
        tower = eager.model.vision_tower
        last = (tower.vision_model if hasattr(tower, "vision_model") else tower).encoder.layers[-1]
        keys = last.self_attn.k_proj(last.layer_norm1(vt.hidden_states[-2]))[:, 1:]  # (B, N, D_v), CLS dropped
        tokens = eager.model.multi_modal_projector(vt.hidden_states[-2][:, 1:])  # (B, N, D_llm)
    assert_matches(prepared.result, naive_prumerge_plus(attn, keys, tokens, 32))
    new = vlm.generate(**batch, max_new_tokens=3)
    assert new.shape == (2, 3)


def test_qwen_uses_the_authors_score_and_generates():
    model, processor = tiny_qwen2_5_vl()
    batch = make_inputs(processor, 32)
    vlm = PrunedVLM(model, processor, method="prumerge_plus", budget=8)
    prepared = vlm.prepare(**batch)
    x = prepared.context.image_tokens.float()  # (B, N, D): the merged tokens (keys and merged features)
    attn = authors_qwen_score(model, batch)  # the HoloV authors' last-block received attention
    assert_matches(prepared.result, naive_prumerge_plus(attn, x, x, 8))
    assert vlm.generate(**batch, max_new_tokens=3).shape == (2, 3)
    assert "prumerge_plus" in PRUNERS
