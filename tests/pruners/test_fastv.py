"""FastV: explicit attention row == eager attention, top-k == a naive loop, hook plumbing, KV-cache decoding."""

from __future__ import annotations

import copy

import numpy as np
import PIL.Image
import pytest
import torch

from steprune.backbones.tiny import tiny_llava, tiny_qwen2_5_vl
from steprune.pruned_vlm import PrunedVLM
from steprune.pruners import PRUNERS, LayerDrop
from steprune.pruners.fastv import FastVPruner, scale_layer

QUESTIONS = ("What colour is it?", "How many objects are there in the whole scene today?")


def make_inputs(processor, size: int, questions=QUESTIONS, seed: int = 0):
    """A left-padded batch of 2 (prompts of different lengths), one random image per prompt."""
    rng = np.random.default_rng(seed)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in questions]
    msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in msgs]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def one_sample(inputs, b: int) -> dict:
    real = inputs["attention_mask"][b].bool()
    return {
        "input_ids": inputs["input_ids"][b][real][None],
        "attention_mask": inputs["attention_mask"][b][real][None],
        "pixel_values": inputs["pixel_values"][b : b + 1],
    }


class Recorder:
    """Wraps a pruner; records (view, chosen) of every in-LLM drop."""

    name = "recorder"
    reads_text = True
    adaptive = False

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list = []

    def select(self, ctx):
        return self.inner.select(ctx)

    def layer_drops(self, ctx, num_layers):
        def wrap(choose):
            def recorded(view):
                chosen = choose(view)
                self.calls.append((view, chosen))
                return chosen

            return recorded

        return [LayerDrop(d.layer, wrap(d.choose)) for d in self.inner.layer_drops(ctx, num_layers)]


@pytest.fixture(scope="module")
def llava4():
    return tiny_llava(text_layers=4)  # N = 16 visual tokens


@pytest.fixture(scope="module")
def batch(llava4):
    return make_inputs(llava4[1], 32)


def naive_topk(row, image_slots, k):
    """Per sample: the k image tokens with the largest mean-over-heads attention; ties to the lower index."""
    kept = []
    for b in range(row.shape[0]):
        positions = [p for p in range(image_slots.shape[1]) if image_slots[b, p]]
        scores = [float(row[b, :, p].mean()) for p in positions]
        order = sorted(range(len(positions)), key=lambda i: (-scores[i], i))
        kept.append(sorted(order[:k]))
    return kept


@pytest.mark.parametrize("text_free", [False, True])
def test_attention_row_matches_eager_and_naive_topk(llava4, batch, text_free):
    model, processor = llava4
    k_layer, budget = 2, 5
    rec = Recorder(FastVPruner(layer=k_layer, reference_layers=None))
    vlm = PrunedVLM(model, processor, method=rec, budget=budget, text_free=text_free)
    out = vlm(**batch)
    assert out.visual_tokens_per_stage == [(0, 16), (k_layer, budget)]
    ((view, chosen),) = rec.calls

    prepared = vlm.prepare(**batch)  # keep-all: the full spliced sequence the drop saw
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        ref = eager(**prepared.spliced.model_kwargs(), output_attentions=True).attentions[k_layer - 1]  # (B,H,S,S)
    slots = prepared.spliced.image_slots
    if text_free:  # the last visual token's row
        last = torch.tensor([int(slots[b].nonzero().max()) for b in range(slots.shape[0])])
        ref_row = ref[torch.arange(len(last)), :, last, :]  # (B, H, S)
        ours = view.attention_rows(k_layer - 1, view.image_positions[:, -1:])[:, :, 0]
    else:
        ref_row = ref[:, :, -1, :]
        ours = view.last_token_attention(k_layer - 1)
    torch.testing.assert_close(ours, ref_row, atol=1e-5, rtol=1e-4)
    assert [sorted(c.tolist()) for c in chosen] == naive_topk(ref_row, slots, budget)


def test_keep_all_budget_reproduces_unpruned_logits(llava4, batch):
    model, processor = llava4
    out = PrunedVLM(model, processor, method="fastv", budget=16, layer=2, reference_layers=None)(**batch)
    assert out.visual_tokens_per_stage == [(0, 16), (2, 16)]
    with torch.no_grad():
        ref = model(**batch).logits
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)


def test_generate_first_token_equals_prefill_argmax(llava4, batch):
    model, processor = llava4
    vlm = PrunedVLM(model, processor, method="fastv", budget=4, layer=2, reference_layers=None)
    new = vlm.generate(**batch, max_new_tokens=3)
    assert new.shape == (2, 3)
    assert new[:, 0].tolist() == vlm(**batch).logits[:, -1].argmax(-1).tolist()


def test_text_free_cached_generate_equals_full_recomputation(llava4, batch):
    """Text-free FastV is query-independent, so re-running the prefill on prompt + generated tokens picks
    the same visual tokens: KV-cache decoding must equal greedy decoding by full recomputation."""
    model, processor = llava4
    vlm = PrunedVLM(model, processor, method="fastv", budget=4, text_free=True, layer=2, reference_layers=None)
    cached = vlm.generate(**batch, max_new_tokens=3)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for _ in range(3):
        nxt = vlm(input_ids=ids, attention_mask=mask, pixel_values=batch["pixel_values"]).logits[:, -1].argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    assert cached.tolist() == ids[:, -3:].tolist()


def test_batch_equals_per_sample(llava4, batch):
    model, processor = llava4
    vlm = PrunedVLM(model, processor, method="fastv", budget=6, layer=2, reference_layers=None)
    together = vlm.generate(**batch, max_new_tokens=3)
    alone = [vlm.generate(**one_sample(batch, b), max_new_tokens=3)[0] for b in range(2)]
    assert together.tolist() == [a.tolist() for a in alone]


def test_scale_layer():
    assert scale_layer(2, 32) == 2
    assert scale_layer(2, 4) == 1  # round(0.25) = 0, clamped to 1
    assert scale_layer(16, 4) == 2
    with pytest.raises(ValueError, match=r"layer=40 is outside 1\.\.31 of the 32-layer reference"):
        scale_layer(40, 4)  # not silently clamped to L - 1 (#21)
    assert scale_layer(3, 4, reference_layers=None) == 3
    assert PRUNERS.create("fastv").reads_text


def test_generate_smoke_llava_and_qwen(llava4, batch):
    model, processor = llava4
    assert PrunedVLM(model, processor, method="fastv", budget=4).generate(**batch, max_new_tokens=3).shape == (2, 3)
    qmodel, qproc = tiny_qwen2_5_vl()
    qbatch = make_inputs(qproc, 32)
    vlm = PrunedVLM(qmodel, qproc, method="fastv", budget=4)
    assert vlm(**qbatch).visual_tokens_per_stage == [(0, 16), (1, 4)]
    assert vlm.generate(**qbatch, max_new_tokens=3).shape == (2, 3)
