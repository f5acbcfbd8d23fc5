"""VisionZip: batched dominant + contextual selection == naive loops, indices and merged features, on the tiny
LLaVA (CLS attention from an eager tower, keys from the layer's own weights) and on random tensors."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from steprune import PrunedVLM
from steprune.backbones.tiny import tiny_llava
from steprune.backbones.vision_access import ClipVisionAccess
from steprune.eval.flops import measured_forward_flops
from steprune.pruners import PRUNERS, PruneContext
from steprune.pruners.visionzip import split_budget
from tests.inputs import make_inputs
from tests.qwen_reference import authors_qwen_score


def naive_visionzip(tokens, cls, keys, budget, ratio=54 / 64):
    """One sample. tokens (N, D) in LLM space, cls (N,), keys (N, dh) already averaged over heads.

    Returns {kept index: feature}: dominant tokens keep their own token, each contextual token is the authors'
    target + mean(assigned tokens) (the target alone when nothing is assigned), at the target's index.
    """
    n = tokens.shape[0]
    dominant = int(budget * ratio + 0.5)
    contextual = budget - dominant
    scores = cls.tolist()
    dom = sorted(range(n), key=lambda i: (-scores[i], i))[:dominant]
    kept = {i: tokens[i].double() for i in dom}
    if contextual == 0:
        return kept
    rest = [i for i in range(n) if i not in dom]
    step = max(1, len(rest) // contextual)
    targets = [rest[p] for p in range(0, len(rest), step)][:contextual]
    groups = {t: [] for t in targets}
    unit = {i: keys[i].double() / keys[i].double().norm() for i in rest}
    for i in rest:
        if i in targets:
            continue
        sims = [float(unit[i] @ unit[t]) for t in targets]
        best = max(range(len(targets)), key=lambda q: (sims[q], -q))  # most similar, then lower target
        groups[targets[best]].append(i)
    for t, members in groups.items():
        assigned = sum(tokens[i].double() for i in members) / len(members) if members else 0.0
        kept[t] = tokens[t].double() + assigned
    return kept


def assert_matches(result, expected_per_sample):
    for b, expected in enumerate(expected_per_sample):
        assert result.keep[b].tolist() == sorted(expected), f"sample {b}"
        for slot, index in enumerate(result.keep[b].tolist()):
            torch.testing.assert_close(result.merged[b, slot].double(), expected[index], atol=1e-5, rtol=1e-5)


def test_contextual_token_is_target_plus_mean_of_assigned():
    """The authors' 1-D example: target 1 with assigned 2, 3, 4, 5 -> 1 + 3.5 = 4.5 (the old average gave 3.0)."""
    tokens = torch.tensor([[[9.0], [1.0], [2.0], [3.0], [4.0], [5.0]]])  # (1, 6, 1); token 0 is dominant
    cls = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    keys = torch.tensor([[9.0, 1.0], [1.0, 0.0], [1.0, 0.1], [1.0, 0.2], [1.0, 0.3], [1.0, 0.4]])  # one direction
    ctx = PruneContext(
        image_tokens=tokens,
        vision_features=tokens,
        text_embeds=torch.zeros(1, 1, 1),
        text_mask=torch.ones(1, 1, dtype=torch.bool),
        budget=2,
        grid=(1, 6),
        vision=TokenAccess(cls, keys.view(1, 1, 6, 2), has_cls=False),
    )
    result = PRUNERS.create("visionzip", dominant_ratio=0.5).select(ctx)
    assert result.keep.tolist() == [[0, 1]]
    assert result.merged[0, :, 0].tolist() == [9.0, 4.5]


def test_split_budget():
    assert split_budget(64, 54 / 64) == (54, 10)
    assert split_budget(128, 54 / 64) == (108, 20)
    assert split_budget(192, 54 / 64) == (162, 30)
    assert split_budget(16, 54 / 64) == (14, 2)  # 13.5 rounds half up
    assert split_budget(1, 54 / 64) == (1, 0)


@pytest.fixture(scope="module")
def llava64():
    return tiny_llava(image_size=64)  # N = 64


@pytest.mark.parametrize("budget", [3, 16, 30, 64])
def test_tiny_llava_matches_naive(llava64, budget):
    model, processor = llava64
    inputs = make_inputs(processor, size=64)
    prepared = PrunedVLM(model, processor, method="visionzip", budget=budget).prepare(**inputs)
    assert prepared.result.keep.shape == (2, budget)

    tower = copy.deepcopy(model.model.vision_tower)
    tower.set_attn_implementation("eager")
    out = tower(inputs["pixel_values"], output_attentions=True, output_hidden_states=True)
    cls = out.attentions[-2][:, :, 0, 1:].sum(dim=1)  # (B, N): CLS row of layer -2, summed over heads
    layers = tower.vision_model.encoder.layers if hasattr(tower, "vision_model") else tower.encoder.layers
    block = layers[len(layers) - 2]
    hidden = block.layer_norm1(out.hidden_states[len(layers) - 2])  # input of layer -2
    heads = block.self_attn.num_heads
    keys = block.self_attn.k_proj(hidden).unflatten(-1, (heads, -1)).mean(dim=2)[:, 1:]  # (B, N, dh)
    projected = model.model.multi_modal_projector(out.hidden_states[-2][:, 1:])  # (B, N, D_llm)
    expected = [naive_visionzip(projected[b], cls[b], keys[b], budget) for b in range(2)]
    assert_matches(prepared.result, expected)


@pytest.mark.parametrize("budget", [3, 16])  # 3: dominant tokens only (CLS row); 16: 14 + 2 contextual (+ keys)
def test_selection_flops_equal_flop_counter(llava64, budget):
    """Reported FLOPs == FlopCounterMode's count of `select` on an uncached access (layer -2's q/k projected
    once, the CLS row, the key similarities) + the merge's sums and means it adds by hand (not matmuls)."""
    model, processor = llava64
    vlm = PrunedVLM(model, processor, method="visionzip", budget=budget)
    ctx = vlm.prepare(**make_inputs(processor, size=64)).context
    ctx = dataclasses.replace(ctx, vision=ClipVisionAccess(ctx.vision.hidden_states, ctx.vision.layers))
    results = []
    measured = measured_forward_flops(lambda: results.append(PRUNERS.create("visionzip").select(ctx)))
    b, n, d_llm = ctx.image_tokens.shape
    dominant, _ = split_budget(budget, 54 / 64)
    contextual = budget - dominant
    merge = b * (n - dominant + contextual) * d_llm if contextual else 0  # sums, means, + target
    assert results[0].selection_flops == measured + merge


class TokenAccess:
    """A VisionAccess stand-in: given CLS scores and keys, with or without a CLS row in the keys."""

    def __init__(self, cls: torch.Tensor, keys: torch.Tensor, has_cls: bool) -> None:
        self.cls, self._keys, self.has_cls = cls, keys, has_cls

    def cls_attention(self, layer: int = -2, reduce: str = "sum") -> torch.Tensor:
        assert (layer, reduce) == (-2, "sum")
        return self.cls

    def keys(self, layer: int) -> torch.Tensor:
        return self._keys


@pytest.mark.parametrize("has_cls", [True, False])
@pytest.mark.parametrize("budget", [1, 7, 20, 25])
def test_random_tensors_match_naive(has_cls, budget):
    g = torch.Generator().manual_seed(budget)
    b, n = 3, 25
    tokens = torch.randn(b, n, 8, generator=g)
    cls = torch.rand(b, n, generator=g)
    cls[:, 3] = cls[:, 4] = 2.0  # a tie: the lower index wins
    keys = torch.randn(b, 2, n + int(has_cls), 5, generator=g)  # (B, H, S, dh)
    ctx = PruneContext(
        image_tokens=tokens,
        vision_features=tokens,
        text_embeds=torch.zeros(b, 1, 8),
        text_mask=torch.ones(b, 1, dtype=torch.bool),
        budget=budget,
        grid=(5, 5),
        vision=TokenAccess(cls, keys, has_cls),
    )
    result = PRUNERS.create("visionzip").select(ctx)
    mean_keys = keys.mean(dim=1)[:, int(has_cls) :]
    assert_matches(result, [naive_visionzip(tokens[i], cls[i], mean_keys[i], budget) for i in range(b)])
    free = PRUNERS.create("visionzip").select(dataclasses.replace(ctx, text_free=True))
    assert torch.equal(free.keep, result.keep) and not PRUNERS.get("visionzip").reads_text


def test_qwen_uses_the_authors_score(qwen):
    """Qwen2.5-VL: dominant tokens by the attention received in the tower's last block (the HoloV authors' score,
    naive reference); keys are the merged tokens."""
    model, processor = qwen
    inputs = make_inputs(processor)
    prepared = PrunedVLM(model, processor, method="visionzip", budget=8).prepare(**inputs)
    x = prepared.context.image_tokens
    scores = authors_qwen_score(model, inputs)
    expected = [naive_visionzip(x[b], scores[b], x[b], 8) for b in range(2)]
    assert_matches(prepared.result, expected)


@pytest.mark.parametrize("name", ["llava", "qwen"])
def test_generate_smoke(name, llava, qwen):
    model, processor = {"llava": llava, "qwen": qwen}[name]
    vlm = PrunedVLM(model, processor, method="visionzip", budget=6)
    out = vlm.generate(**make_inputs(processor), max_new_tokens=3)
    assert out.shape[0] == 2 and out.shape[1] <= 3
    assert vlm(**make_inputs(processor)).selection_flops > 0
