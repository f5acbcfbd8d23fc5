"""PyramidDrop: schedules, and the kept indices of every stage against naive references.

Stage 1 is checked against the attention weights of an *unpruned eager* forward (`output_attentions=True`);
every stage (including the first) is also checked against a hand-written attention (RMSNorm, q/k projections,
RoPE and a masked softmax in plain Python loops over samples and heads) on the hidden states the session
captured entering the drop layer, with the sequence positions tracked independently of the session.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

from steprune.backbones.tiny import tiny_llava, tiny_qwen2_5_vl
from steprune.eval.flops import equivalent_visual_tokens
from steprune.pruned_vlm import PrunedVLM
from steprune.pruners import PRUNERS, LayerDrop, PruneContext
from steprune.pruners.pdrop import PyramidDropPruner, scale_layers
from tests.inputs import select_sample
from tests.renumbered import assert_generate_matches_renumbered_run

QUESTIONS = ["What colour is the square?", "Is there a circle in the image? How many objects are there?"]
BUDGET = 32  # tiny LLaVA below: N = 64 visual tokens, 4 layers -> drops at 1/2/3 keeping 37/18/9


def batch(processor, size: int, questions: list[str] = QUESTIONS):
    images = [Image.fromarray((np.random.RandomState(i).rand(size, size, 3) * 255).astype("uint8")) for i in range(2)]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}], add_generation_prompt=True
        )
        for q in questions
    ]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


class Recording(PyramidDropPruner):
    """Records what every drop saw and chose."""

    def layer_drops(self, ctx: PruneContext, num_layers: int) -> list[LayerDrop]:
        self.seen: list[dict] = []

        def wrap(choose):
            def run(view):
                chosen = choose(view)
                self.seen.append({"layer": view.layer, "hidden": view.hidden_states.clone(), "chosen": chosen})
                return chosen

            return run

        return [LayerDrop(d.layer, wrap(d.choose), d.renumber) for d in super().layer_drops(ctx, num_layers)]


@pytest.fixture(scope="module")
def llava():
    model, processor = tiny_llava(text_layers=4, image_size=64)
    inputs = batch(processor, 64)
    assert (inputs["attention_mask"] == 0).any(), "the batch must be padded"
    return model, processor, inputs


def naive_top_k(scores: list[float], k: int) -> list[int]:
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:k])


def assert_same_choice(scores: list[float], chosen: list[int], k: int) -> None:
    expected = naive_top_k(scores, k)
    if expected != chosen:  # only a float near-tie at the k-th score may differ
        kth = sorted(scores, reverse=True)[k - 1]
        for i in set(expected) ^ set(chosen):
            assert abs(scores[i] - kth) < 1e-6, f"kept {chosen}, expected {expected}"


def hand_attention_row(layer, config, hidden: torch.Tensor, positions: list[int], valid: list[bool], query: int):
    """Head-averaged softmax attention of sequence index `query` over all keys, for one sample, by hand."""
    x = hidden.double()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps) * layer.input_layernorm.weight.double()
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    dh = getattr(config, "head_dim", None) or config.hidden_size // heads
    q = (x @ layer.self_attn.q_proj.weight.double().T).view(-1, heads, dh)
    k = (x @ layer.self_attn.k_proj.weight.double().T).view(-1, kv_heads, dh)
    theta = config.rope_parameters["rope_theta"]

    def rope(v: torch.Tensor, pos: int) -> torch.Tensor:
        out = v.clone()
        for i in range(dh // 2):
            angle = pos / theta ** (2 * i / dh)
            c, s = math.cos(angle), math.sin(angle)
            out[..., i] = v[..., i] * c - v[..., i + dh // 2] * s
            out[..., i + dh // 2] = v[..., i + dh // 2] * c + v[..., i] * s
        return out

    keys = [j for j in range(query + 1) if valid[j]]
    row = [0.0] * hidden.shape[0]
    for h in range(heads):
        qh = rope(q[query, h], positions[query])
        logits = [float(qh @ rope(k[j, h // (heads // kv_heads)], positions[j])) / math.sqrt(dh) for j in keys]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        for j, w in zip(keys, weights, strict=True):
            row[j] += w / sum(weights) / heads
    return row


def renumbered(cols: list[int], mask: list[int]) -> list[int]:
    """The authors' positions after drops: real tokens numbered 0, 1, ... over the columns left; padding 1."""
    rank = [sum(mask[c] for c in cols[: i + 1]) - 1 for i in range(len(cols))]
    return [rank[i] if mask[c] else 1 for i, c in enumerate(cols)]


def test_faithful_prefill_and_decode_match_a_renumbered_run(llava):
    """One prompt alone: logits of the pruned prefill and of the first cached decode step == a naive layer-by-layer
    run that drops the same tokens and numbers every layer's sequence 0..S_j - 1 (the authors' pdrop_forward)."""
    model, processor, inputs = llava
    single = select_sample(inputs, 1)
    prefill = assert_generate_matches_renumbered_run(model, processor, Recording(faithful=True), single, BUDGET)
    default = PrunedVLM(model, processor, method="pdrop", budget=BUDGET)(**single).logits[0, -1]
    assert not torch.allclose(default, prefill, atol=1e-5)  # the positions matter


def test_faithful_truncates_the_paper_ratios():
    ratios = (0.5, 0.25, 0.125)  # N = 100: 12.5 -> int() 12, round half up 13
    assert PyramidDropPruner(ratios=ratios, faithful=True).schedule(100, 32, 10) == [(8, 50), (16, 25), (24, 12)]
    assert PyramidDropPruner(ratios=ratios).schedule(100, 32, 10) == [(8, 50), (16, 25), (24, 13)]


def test_first_drop_matches_eager_attentions(llava):
    model, processor, inputs = llava
    pruner = Recording()
    PrunedVLM(model, processor, method=pruner, budget=BUDGET)(**inputs)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    mask = inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        out = eager(**inputs, position_ids=positions, output_attentions=True)
    first = pruner.seen[0]
    attention = out.attentions[first["layer"]]  # (B, H, S, S)
    k = first["chosen"].shape[1]
    for b in range(2):
        image = [j for j in range(mask.shape[1]) if inputs["input_ids"][b, j] == model.config.image_token_id]
        row = attention[b, :, -1].mean(0)
        assert_same_choice([float(row[j]) for j in image], first["chosen"][b].tolist(), k)


@pytest.mark.parametrize(("text_free", "faithful"), [(False, False), (True, False), (False, True)])
def test_every_drop_matches_hand_attention(llava, text_free, faithful):
    """faithful: the authors' positions, renumbered contiguously over the real tokens left after each drop."""
    model, processor, inputs = llava
    pruner = Recording(faithful=faithful)
    out = PrunedVLM(model, processor, method=pruner, budget=BUDGET, text_free=text_free)(**inputs)
    config = model.config.text_config
    decoder = model.model.language_model
    image_id = model.config.image_token_id
    plan = pruner.schedule(64, 4, BUDGET)
    assert [(d["layer"], d["chosen"].shape[1]) for d in pruner.seen] == plan
    assert out.visual_tokens_per_stage == [(0, 64), *plan]
    for b in range(2):
        mask = inputs["attention_mask"][b].tolist()
        ids = inputs["input_ids"][b].tolist()
        full_positions = [max(sum(mask[: j + 1]) - 1, 0) if mask[j] else 1 for j in range(len(mask))]
        cols = list(range(len(mask)))  # original columns still in the sequence
        for drop in pruner.seen:
            image = [i for i, c in enumerate(cols) if ids[c] == image_id]
            query = image[-1] if text_free else len(cols) - 1
            row = hand_attention_row(
                decoder.layers[drop["layer"]],
                config,
                drop["hidden"][b],
                renumbered(cols, mask) if faithful else [full_positions[c] for c in cols],
                [bool(mask[c]) for c in cols],
                query,
            )
            chosen = drop["chosen"][b].tolist()
            assert_same_choice([row[i] for i in image], chosen, len(chosen))
            dropped = {cols[image[i]] for i in range(len(image)) if i not in chosen}
            cols = [c for c in cols if c not in dropped]


def test_paper_schedule_and_budget_driven_schedules():
    paper = PyramidDropPruner(ratios=(0.5, 0.25, 0.125))
    assert paper.schedule(576, 32, 64) == [(8, 288), (16, 144), (24, 72)]
    pruner = PyramidDropPruner()
    assert pruner.schedule(576, 32, 270) == [(8, 288), (16, 144), (24, 72)]  # the paper's own average
    assert pruner.schedule(576, 32, 192) == [(6, 215), (12, 108), (18, 54)]
    assert pruner.schedule(576, 32, 128) == [(4, 163), (8, 81), (12, 41)]
    assert pruner.schedule(576, 32, 64) == [(2, 94), (4, 47), (6, 24)]
    for budget in (64, 96, 128, 192, 300):
        plan = pruner.schedule(576, 32, budget)
        counts = [k for _, k in plan]
        assert counts == sorted(counts, reverse=True) and counts[0] >= budget
        assert abs(equivalent_visual_tokens(32, [(0, 576), *plan]) - budget) < 1.0
    fixed = PyramidDropPruner(shift_layers=False)
    assert [layer for layer, _ in fixed.schedule(576, 32, 200)] == [8, 16, 24]


def test_layer_scaling():
    assert scale_layers((8, 16, 24), 32) == [8, 16, 24]
    assert scale_layers((8, 16, 24), 4) == [1, 2, 3]
    assert scale_layers((2, 6, 15), 4) == [1, 2, 3]
    assert scale_layers((8, 16, 24), 2) == [1, 1, 1]
    assert PyramidDropPruner().schedule(16, 2, 8) == [(1, 2)]  # zero-width stages collapse into one drop


def test_shallow_llm_schedule_follows_the_budget():
    """3 layers, N = 144 (the world base): the first layer alone holds 48 equivalent tokens, so no pyramid reaches
    the budget on average; it then starts at the budget instead of collapsing to one token for every budget."""
    pruner = PyramidDropPruner()
    plans = {budget: pruner.schedule(144, 3, budget) for budget in (48, 32, 16)}
    assert plans == {48: [(1, 24), (2, 12)], 32: [(1, 16), (2, 8)], 16: [(1, 8), (2, 4)]}
    for budget, plan in plans.items():
        assert equivalent_visual_tokens(3, [(0, 144), *plan]) > budget  # honest: more than asked, never fewer


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_counts_select_and_generate(family):
    if family == "llava":
        model, processor = tiny_llava(text_layers=4)
    else:
        model, processor = tiny_qwen2_5_vl(text_layers=4)
    inputs = batch(processor, 32)
    vlm = PrunedVLM(model, processor, method="pdrop", budget=8)
    out = vlm(**inputs)
    assert out.result.keep.shape == (2, 16) and bool(out.result.keep_mask.all())  # select keeps all
    assert out.visual_tokens_per_stage == [(0, 16), (1, 9), (2, 5), (3, 2)]
    assert out.selection_flops > 0
    new = vlm.generate(**inputs, max_new_tokens=3)
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 3
    assert PRUNERS.get("pdrop").reads_text
