"""SparseVLM: the authors' schedules, and the kept indices of every stage against naive references.

Raters are recomputed per sample in Python from the unpruned model's input embeddings (`output_hidden_states`)
or from the hidden states the session captured entering the drop layer; the first drop is checked against an
unpruned *eager* forward's attention weights, every drop against a hand-written attention (RMSNorm, q/k, RoPE,
masked softmax, loops over samples, heads and queries) with sequence positions tracked independently.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

from steprune.backbones.tiny import tiny_llava, tiny_qwen2_5_vl
from steprune.pruned_vlm import PrunedVLM
from steprune.pruners import PRUNERS, LayerDrop, PruneContext
from steprune.pruners.sparsevlm import SparseVLMPruner
from tests.inputs import select_sample
from tests.renumbered import assert_generate_matches_renumbered_run

QUESTIONS = ["What colour is the square?", "Is there a circle in the image? How many objects are there?"]
BUDGET = 16  # tiny LLaVA below: N = 64, 4 layers -> drops at 1/2/3 keeping 34/15/6


def batch(processor, size: int, questions: list[str] = QUESTIONS):
    images = [Image.fromarray((np.random.RandomState(i).rand(size, size, 3) * 255).astype("uint8")) for i in range(2)]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}], add_generation_prompt=True
        )
        for q in questions
    ]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


class Recording(SparseVLMPruner):
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
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    mask = inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        reference = eager(**inputs, position_ids=positions, output_attentions=True, output_hidden_states=True)
    return model, processor, inputs, reference


def assert_same_choice(scores: list[float], chosen: list[int], k: int) -> None:
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    expected = sorted(ranked[:k])
    if expected != chosen:  # only a float near-tie at the k-th score may differ
        kth = scores[ranked[k - 1]]
        for i in set(expected) ^ set(chosen):
            assert abs(scores[i] - kth) < 1e-6, f"kept {chosen}, expected {expected}"


def naive_raters(hidden: torch.Tensor, image: list[int], after: list[int]) -> list[int]:
    """Text tokens after the image whose mean (over visual tokens) softmax-over-text relevance beats the mean."""
    dots = (hidden.double() @ hidden.double().T).tolist()  # plain dot products; the loops below do the rest
    relevance = [0.0] * len(after)
    for v in image:
        logits = [dots[v][t] for t in after]
        top = max(logits)
        weights = [math.exp(x - top) for x in logits]
        for i, w in enumerate(weights):
            relevance[i] += w / sum(weights) / len(image)
    mean = sum(relevance) / len(relevance)
    raters = [t for t, r in zip(after, relevance, strict=True) if r > mean]
    return raters or after


def hand_attention(layer, config, hidden: torch.Tensor, positions: list[int], valid: list[bool]):
    """Returns row(query) -> head-averaged softmax attention of one sample's query index over all keys."""
    x = hidden.double()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps) * layer.input_layernorm.weight.double()
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    dh = getattr(config, "head_dim", None) or config.hidden_size // heads
    q = (x @ layer.self_attn.q_proj.weight.double().T).view(-1, heads, dh)
    k = (x @ layer.self_attn.k_proj.weight.double().T).view(-1, kv_heads, dh)
    theta = config.rope_parameters["rope_theta"]
    angle = torch.tensor([[p / theta ** (2 * i / dh) for i in range(dh // 2)] for p in positions], dtype=torch.float64)
    cos, sin = angle.cos().repeat(1, 2).unsqueeze(1), angle.sin().repeat(1, 2).unsqueeze(1)

    def rope(v: torch.Tensor) -> torch.Tensor:
        return v * cos + torch.cat([-v[..., dh // 2 :], v[..., : dh // 2]], dim=-1) * sin

    q, k = rope(q), rope(k)
    dots = [(q[:, h] @ k[:, h // (heads // kv_heads)].T).tolist() for h in range(heads)]  # (S, S) per head

    def row(query: int) -> list[float]:
        keys = [j for j in range(query + 1) if valid[j]]
        out = [0.0] * hidden.shape[0]
        for h in range(heads):
            logits = [dots[h][query][j] / math.sqrt(dh) for j in keys]
            top = max(logits)
            weights = [math.exp(v - top) for v in logits]
            for j, w in zip(keys, weights, strict=True):
                out[j] += w / sum(weights) / heads
        return out

    return row


def test_first_drop_matches_eager_attentions(llava):
    model, processor, inputs, reference = llava
    pruner = Recording()
    PrunedVLM(model, processor, method=pruner, budget=BUDGET)(**inputs)
    first = pruner.seen[0]
    attention = reference.attentions[first["layer"]]  # (B, H, S, S)
    mask, ids = inputs["attention_mask"], inputs["input_ids"]
    for b in range(2):
        image = [j for j in range(mask.shape[1]) if ids[b, j] == model.config.image_token_id]
        after = [j for j in range(image[-1] + 1, mask.shape[1]) if mask[b, j]]
        raters = naive_raters(reference.hidden_states[0][b], image, after)
        mean_heads = attention[b].mean(0).tolist()  # (S, S)
        scores = [sum(mean_heads[r][j] for r in raters) / len(raters) for j in image]
        assert_same_choice(scores, first["chosen"][b].tolist(), first["chosen"].shape[1])


@pytest.mark.parametrize("mode", ["input", "layer", "text_free"])
def test_every_drop_matches_hand_attention(llava, mode):
    model, processor, inputs, reference = llava
    pruner = Recording(raters="layer" if mode == "layer" else "input")
    out = PrunedVLM(model, processor, method=pruner, budget=BUDGET, text_free=mode == "text_free")(**inputs)
    plan = pruner.schedule(64, 4, BUDGET)
    assert plan == [(1, 34), (2, 15), (3, 6)]
    assert [(d["layer"], d["chosen"].shape[1]) for d in pruner.seen] == plan
    assert out.visual_tokens_per_stage == [(0, 64), *plan]
    config, decoder = model.config.text_config, model.model.language_model
    for b in range(2):
        mask, ids = inputs["attention_mask"][b].tolist(), inputs["input_ids"][b].tolist()
        full_positions = [max(sum(mask[: j + 1]) - 1, 0) if mask[j] else 1 for j in range(len(mask))]
        image0 = [j for j in range(len(ids)) if ids[j] == model.config.image_token_id]
        after0 = [j for j in range(image0[-1] + 1, len(ids)) if mask[j]]
        input_raters = naive_raters(reference.hidden_states[0][b], image0, after0)  # original columns
        cols = list(range(len(mask)))  # original columns still in the sequence
        for drop in pruner.seen:
            hidden = drop["hidden"][b]
            image = [i for i, c in enumerate(cols) if c in image0]
            row = hand_attention(
                decoder.layers[drop["layer"]],
                config,
                hidden,
                [full_positions[c] for c in cols],
                [bool(mask[c]) for c in cols],
            )
            if mode == "text_free":
                rows = {i: row(i) for i in image}
                scores = [sum(rows[i][j] for i in image if i >= j) / sum(i >= j for i in image) for j in image]
            else:
                if mode == "layer":
                    raters = naive_raters(hidden, image, [cols.index(c) for c in after0])
                else:
                    raters = [cols.index(c) for c in input_raters]
                rows = {r: row(r) for r in raters}
                scores = [sum(rows[r][j] for r in raters) / len(raters) for j in image]
            chosen = drop["chosen"][b].tolist()
            assert_same_choice(scores, chosen, len(chosen))
            dropped = {cols[image[i]] for i in range(len(image)) if i not in chosen}
            cols = [c for c in cols if c not in dropped]


def test_faithful_prefill_and_decode_match_a_compacted_run(llava):
    """One prompt alone: the authors' compacted positions (every layer from a drop on numbers its sequence
    0..S_j - 1, decode continues at each layer's cached length) == a naive layer-by-layer run."""
    model, processor, inputs, _ = llava
    single = select_sample(inputs, 0)
    assert_generate_matches_renumbered_run(model, processor, Recording(faithful=True), single, BUDGET)


def test_faithful_always_drops_one(llava):
    """The authors keep min(schedule, surviving - 1): at budget N (the table keeps all 64) each drop still drops one."""
    model, processor, inputs, _ = llava
    for faithful, kept in [(True, [63, 62, 61]), (False, [64, 64, 64])]:
        pruner = Recording(faithful=faithful)
        PrunedVLM(model, processor, method=pruner, budget=64)(**inputs)
        assert [d["chosen"].shape[1] for d in pruner.seen] == kept


AUTHORS_V1_TABLE = {192: [300, 200, 110], 128: [303, 110, 36], 96: [238, 48, 26], 64: [66, 30, 17]}  # score.py, v1


@pytest.mark.parametrize("budget", sorted(AUTHORS_V1_TABLE))
def test_every_entry_of_the_authors_table_is_used_exactly(budget):
    assert SparseVLMPruner().schedule(576, 32, budget) == list(zip((2, 6, 15), AUTHORS_V1_TABLE[budget], strict=True))


def test_between_table_entries_interpolates():
    assert SparseVLMPruner().schedule(576, 32, 80) == [(2, 152), (6, 39), (15, 22)]  # halfway between 64 and 96
    assert SparseVLMPruner().schedule(144, 32, 24) == [(2, 60), (6, 12), (15, 7)]  # the 96 entry scaled by 1/4


def test_authors_schedules_and_scaling():
    pruner = SparseVLMPruner()
    assert pruner.schedule(576, 32, 64) == [(2, 66), (6, 30), (15, 17)]
    assert pruner.schedule(576, 32, 128) == [(2, 303), (6, 110), (15, 36)]
    assert pruner.schedule(576, 32, 192) == [(2, 300), (6, 200), (15, 110)]
    assert pruner.schedule(144, 32, 32) == [(2, 76), (6, 28), (15, 9)]  # the 128/576 schedule scaled by 1/4
    assert pruner.schedule(576, 32, 576) == [(2, 576), (6, 576), (15, 576)]
    assert pruner.schedule(576, 32, 160) == [(2, 302), (6, 155), (15, 73)]  # halfway between 128 and 192
    assert pruner.schedule(16, 4, 4) == [(1, 8), (2, 4), (3, 2)]
    with pytest.raises(ValueError):
        SparseVLMPruner(raters="all")


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_counts_select_and_generate(family):
    if family == "llava":
        model, processor = tiny_llava(text_layers=4)
    else:
        model, processor = tiny_qwen2_5_vl(text_layers=4)
    inputs = batch(processor, 32)
    for kwargs in ({}, {"text_free": True}, {"raters": "layer"}):
        vlm = PrunedVLM(model, processor, method="sparsevlm", budget=4, **kwargs)
        out = vlm(**inputs)
        assert out.result.keep.shape == (2, 16) and bool(out.result.keep_mask.all())  # select keeps all
        assert out.visual_tokens_per_stage == [(0, 16), (1, 8), (2, 4), (3, 2)]
        assert out.selection_flops > 0
    new = vlm.generate(**inputs, max_new_tokens=3)
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 3
    assert PRUNERS.get("sparsevlm").reads_text
