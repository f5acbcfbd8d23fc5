"""DART: kept tokens == a naive loop on hand-computed keys / normed hidden states; exact budget; generate."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from steprune.backbones.tiny import tiny_llava, tiny_qwen2_5_vl
from steprune.eval.flops import measured_forward_flops
from steprune.pruned_vlm import PrunedVLM
from steprune.pruners import LayerDrop
from steprune.pruners.dart import DARTPruner, pivot_shares

QUESTIONS = ("What colour is it?", "How many objects are there in the whole scene today?")


def make_inputs(processor, size: int, questions=QUESTIONS, seed: int = 0):
    """A left-padded batch of 2 (prompts of different lengths), one random image per prompt."""
    rng = np.random.default_rng(seed)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in questions]
    msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in msgs]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


class Recorder:
    """Wraps a pruner; records, for every in-LLM drop, the indices it chose, its view, the FLOPs it added to
    the view's count and FlopCounterMode's count of the same call."""

    name = "recorder"
    reads_text = True
    adaptive = False

    def __init__(self, inner) -> None:
        self.inner = inner
        self.chosen: list = []
        self.views: list = []
        self.counted: list[float] = []
        self.measured: list[float] = []

    def select(self, ctx):
        return self.inner.select(ctx)

    def layer_drops(self, ctx, num_layers):
        def wrap(choose):
            def recorded(view):
                before = view.flops[0]
                self.measured.append(measured_forward_flops(lambda: self.chosen.append(choose(view))))
                self.counted.append(view.flops[0] - before)
                self.views.append(view)
                return self.chosen[-1]

            return recorded

        return [LayerDrop(d.layer, wrap(d.choose)) for d in self.inner.layer_drops(ctx, num_layers)]


@pytest.fixture(scope="module")
def llava64():
    return tiny_llava(text_layers=4, image_size=64)  # N = 64 visual tokens


def naive_dart(model, spliced, layer, budget, image_pivots=4, text_pivots=4, faithful=False):
    """Plain loops over samples and tokens on HF hidden states; keys and RoPE rebuilt from the layer weights."""
    lm = model.model.language_model
    kwargs = spliced.model_kwargs()
    with torch.no_grad():
        hs = model(**kwargs, output_hidden_states=True).hidden_states  # hs[j] enters layer j
        block = lm.layers[layer - 1]
        x = block.input_layernorm(hs[layer - 1])
        b, s, _ = x.shape
        attn = block.self_attn
        k = attn.k_proj(x).view(b, s, -1, attn.head_dim).transpose(1, 2)  # (B, KV, S, dh), not repeated
        cos, sin = lm.rotary_emb(x, kwargs["position_ids"])
        _, k = apply_rotary_pos_emb(k, k, cos, sin)
        normed = lm.norm(hs[layer])  # (B, S, D)
    kept = []
    for i in range(b):
        l1 = [float(k[i, :, p].abs().sum()) for p in range(s)]
        images = [p for p in range(s) if spliced.image_slots[i, p]]
        texts = [p for p in range(s) if spliced.attention_mask[i, p] and p > images[-1]]
        n_img = min(image_pivots, budget)
        img_piv = sorted(sorted(images, key=lambda p: (-l1[p], p))[:n_img])
        txt_piv = sorted(sorted(texts, key=lambda p: (-l1[p], p))[:text_pivots])
        pivots = img_piv + txt_piv
        extra = budget - n_img
        shares = [extra // len(pivots) + (j < extra % len(pivots)) for j in range(len(pivots))]
        if faithful:  # the authors: `for item in list(set(pivots))` on unpadded positions, M // pivots each
            pad = int((spliced.attention_mask[i] == 0).sum())
            pivots = [p + pad for p in list({p - pad for p in pivots})]
            shares = [budget // len(pivots)] * len(pivots)
        pool = [p for p in images if p not in img_piv]
        keep = list(img_piv)
        for pivot, share in zip(pivots, shares, strict=True):
            cos_sim = {p: float(F.cosine_similarity(normed[i, pivot], normed[i, p], dim=0)) for p in pool}
            take = sorted(pool, key=lambda p: (cos_sim[p], p))[:share]
            keep += take
            pool = [p for p in pool if p not in take]
        kept.append(sorted(images.index(p) for p in keep))
    return kept


@pytest.mark.parametrize("budget,text_free", [(23, False), (8, False), (3, False), (13, True)])
def test_dart_matches_naive(llava64, budget, text_free):
    model, processor = llava64
    batch = make_inputs(processor, 64)
    rec = Recorder(DARTPruner(layer=2, reference_layers=None))
    vlm = PrunedVLM(model, processor, method=rec, budget=budget, text_free=text_free)
    out = vlm(**batch)
    assert out.visual_tokens_per_stage == [(0, 64), (2, budget)]
    (chosen,) = rec.chosen
    assert chosen.shape == (2, budget)
    prepared = vlm.prepare(**batch)
    ref = naive_dart(model, prepared.spliced, 2, budget, text_pivots=0 if text_free else 4)
    assert [sorted(c.tolist()) for c in chosen] == ref


@pytest.mark.parametrize("budget,text_free", [(23, False), (40, False), (13, True)])
def test_faithful_matches_the_authors_order_and_counts(llava64, budget, text_free):
    """The authors visit the pivots in Python-set order and give each M // pivots tokens (4 + 8 * (M // 8) kept)."""
    model, processor = llava64
    batch = make_inputs(processor, 64)
    rec = Recorder(DARTPruner(layer=2, reference_layers=None, faithful=True))
    vlm = PrunedVLM(model, processor, method=rec, budget=budget, text_free=text_free)
    vlm(**batch)
    (chosen,) = rec.chosen
    pivots = 4 if text_free else 8
    assert chosen.shape == (2, 4 + pivots * (budget // pivots))
    ref = naive_dart(model, vlm.prepare(**batch).spliced, 2, budget, text_pivots=0 if text_free else 4, faithful=True)
    assert [sorted(c.tolist()) for c in chosen] == ref


def test_selection_flops_count_the_key_projection_once_and_no_query(llava64):
    """The FLOPs DART reports == FlopCounterMode's count of its drop (the GQA-narrow k projection of layer K-1
    and the pivot cosines: no query is projected) + the element-wise work it adds by hand."""
    model, processor = llava64
    budget = 23
    rec = Recorder(DARTPruner(layer=2, reference_layers=None))
    out = PrunedVLM(model, processor, method=rec, budget=budget)(**make_inputs(processor, 64))
    (view,), (counted,), (measured,) = rec.views, rec.counted, rec.measured
    b, s = view.valid.shape
    n, d = view.image_positions.shape[1], view.hidden_states.shape[-1]
    attn = model.model.language_model.layers[1].self_attn
    heads, kv, dh = attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim
    assert kv < heads, "the tiny model should use GQA, so that the k projection is narrower than q"
    steps = sum(map(bool, pivot_shares(budget, 4, 4)))
    k_projection, cosines = 2.0 * b * s * d * kv * dh, 2.0 * b * n * d * steps
    assert measured == k_projection + cosines
    assert counted == measured + b * s * heads * dh + 6 * b * (n + 4) * d  # + key L1 norms, norm + normalise
    assert out.selection_flops == counted


def test_pivot_shares():
    assert pivot_shares(64, 4, 4) == [8] * 4 + [7] * 4  # 60 = 8 * 7 + 4
    assert sum(pivot_shares(23, 4, 4)) == 19
    assert pivot_shares(3, 3, 4) == [0] * 7
    assert pivot_shares(13, 4, 0) == [3, 2, 2, 2]


def test_generate_smoke_llava_and_qwen(llava64):
    model, processor = llava64
    batch = make_inputs(processor, 64)
    vlm = PrunedVLM(model, processor, method="dart", budget=16)
    assert vlm(**batch).visual_tokens_per_stage == [(0, 64), (1, 16)]
    new = vlm.generate(**batch, max_new_tokens=3)
    assert new.shape == (2, 3)
    assert new[:, 0].tolist() == vlm(**batch).logits[:, -1].argmax(-1).tolist()
    qmodel, qproc = tiny_qwen2_5_vl()
    qbatch = make_inputs(qproc, 32)
    qvlm = PrunedVLM(qmodel, qproc, method="dart", budget=9)
    assert qvlm(**qbatch).visual_tokens_per_stage == [(0, 16), (1, 9)]
    assert qvlm.generate(**qbatch, max_new_tokens=3).shape == (2, 3)
