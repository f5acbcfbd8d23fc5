"""HoloV: batched chunk scoring + allocation == a naive per-sample, per-chunk reference (loops), on random
tensors and on the tiny LLaVA with CLS attention from an eager tower; Qwen2.5-VL: the authors' score and
chunk rule; generate."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from steprune import PrunedVLM
from steprune.backbones.tiny import tiny_llava
from steprune.pruners import PRUNERS, PruneContext
from steprune.pruners.holov import allocate
from tests.inputs import make_inputs
from tests.qwen_reference import authors_qwen_score

EPS = 1e-6


class FixedAccess:
    """A VisionAccess stand-in returning given CLS attention (B, N)."""

    has_cls = True

    def __init__(self, cls: torch.Tensor) -> None:
        self.cls = cls

    def cls_attention(self, layer: int = -2, reduce: str = "sum") -> torch.Tensor:
        assert (layer, reduce) == (-2, "mean"), "HoloV reads layer -2, mean over heads"
        return self.cls


def naive_allocation(scores: list[float], sizes: list[int], budget: int) -> list[int]:
    """Proportional, largest remainder (ties: lower chunk), capped, overflow redistributed — plain Python."""
    alloc = [0] * len(sizes)
    remaining = budget
    while remaining > 0:
        open_ = [i for i in range(len(sizes)) if alloc[i] < sizes[i]]
        weights = {i: max(scores[i], 0.0) for i in open_}
        if sum(weights.values()) == 0:
            weights = dict.fromkeys(open_, 1.0)
        total = sum(weights.values())
        quota = {i: weights[i] / total * remaining for i in open_}
        add = {i: math.floor(quota[i]) for i in open_}
        extra = remaining - sum(add.values())
        for i in sorted(open_, key=lambda i: (-(quota[i] - add[i]), i))[:extra]:
            add[i] += 1
        for i in open_:
            given = min(add[i], sizes[i] - alloc[i])
            alloc[i] += given
            remaining -= given
    return alloc


def naive_holov(tokens, attn, budget, chunks=16, weight=0.09, scale="attention") -> list[int]:
    """One sample: tokens (N, D), attn (N,). Loops over chunks and tokens."""
    n = tokens.shape[0]
    parts = torch.tensor_split(torch.arange(n), min(chunks, n))
    a_all = [1e3 * float(v) for v in attn.double()]
    chunk_a, chunk_v = [], []
    for part in parts:
        idx = part.tolist()
        x = [tokens[i].double() / max(float(tokens[i].double().norm()), EPS) for i in idx]
        size = len(idx)
        variances = []
        for i in range(size):
            off = [float(x[i] @ x[j]) for j in range(size) if j != i]
            if not off:
                variances.append(0.0)
                continue
            mu = sum(off) / len(off)
            variances.append(sum((s - mu) ** 2 for s in off) / len(off))
        chunk_a.append([a_all[i] for i in idx])
        chunk_v.append(variances)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    if scale == "attention":
        bonus = [
            mean(v) * mean([abs(t) for t in a]) / (mean([abs(t) for t in v]) + EPS)
            for a, v in zip(chunk_a, chunk_v, strict=True)
        ]
    else:
        means = [mean(v) for v in chunk_v]
        bonus = [(m - min(means)) / (max(means) - min(means) + EPS) for m in means]
    scores = [mean(a) + weight * bb for a, bb in zip(chunk_a, bonus, strict=True)]
    alloc = naive_allocation(scores, [len(p) for p in parts], budget)
    keep = []
    for part, a, k in zip(parts, chunk_a, alloc, strict=True):
        order = sorted(range(len(a)), key=lambda i: (-a[i], i))[:k]
        keep += [part[i].item() for i in order]
    return sorted(keep)


def random_context(seed: int, b: int = 3, n: int = 37, budget: int = 9) -> PruneContext:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, n, 6, generator=g)
    tokens[:, 5:9] = tokens[:, 5:6]  # a chunk of identical tokens: zero similarity variance
    attn = torch.rand(b, n, generator=g).pow(4).softmax(dim=-1)
    return PruneContext(
        image_tokens=tokens,
        vision_features=tokens,
        text_embeds=torch.zeros(b, 1, 6),
        text_mask=torch.ones(b, 1, dtype=torch.bool),
        budget=budget,
        grid=(1, n),
        vision=FixedAccess(attn),
    )


@pytest.mark.parametrize("scale", ["attention", "minmax"])
@pytest.mark.parametrize(("n", "chunks", "budget"), [(37, 16, 9), (37, 16, 30), (64, 16, 16), (12, 5, 11), (7, 16, 3)])
def test_matches_naive_reference(scale, n, chunks, budget):
    ctx = random_context(seed=n + budget, n=n, budget=budget)
    result = PRUNERS.create("holov", chunks=chunks, variance_scale=scale).select(ctx)
    assert result.keep.shape == (3, budget) and bool(result.keep_mask.all())
    for b in range(3):
        expected = naive_holov(ctx.image_tokens[b], ctx.vision.cls[b], budget, chunks, scale=scale)
        assert result.keep[b].tolist() == expected, f"sample {b}"


def authors_holov(tokens, attn, budget, chunks=16) -> list[int]:
    """The authors' `utils.HoloV` for one sample, as plain loops: tokens (N, D), attn (N,). Sorted kept indices."""
    n = tokens.shape[0]
    base, remainder = n // chunks, n % chunks
    starts, sizes, start = [], [], 0
    for p in range(chunks):
        size = base + (1 if p < remainder else 0)
        if size > 0:
            starts.append(start)
            sizes.append(size)
        start += size
    scores = []
    for start, size in zip(starts, sizes, strict=True):
        a = [float(attn[i]) for i in range(start, start + size)]
        if size == 1:
            scores.append(a[0])  # mean attention, no 1e3
            continue
        x = [tokens[i].double() / (float(tokens[i].double().norm()) + EPS) for i in range(start, start + size)]
        sim = [[0.0 if i == j else float(x[i] @ x[j]) for j in range(size)] for i in range(size)]  # zeroed diagonal
        mu = [sum(row) / (size - 1) for row in sim]
        var = [sum((v - mu[i]) ** 2 for v in sim[i]) / (size - 1) for i in range(size)]  # diagonal counted
        scaled = [1e3 * v for v in a]
        scaling = (sum(abs(v) for v in scaled) / size) / (sum(abs(v) for v in var) / size + EPS)
        scores.append(sum(scaled[i] + 0.09 * var[i] * scaling for i in range(size)) / size)
    total = sum(scores)
    weights = [v / (total + EPS) for v in scores]
    alloc = [math.floor(w * budget) for w in weights]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i))[: max(budget - sum(alloc), 0)]:
        alloc[i] += 1
    keep = []
    for start, size, k in zip(starts, sizes, alloc, strict=True):
        order = sorted(range(size), key=lambda i: (-float(attn[start + i]), i))
        keep += [start + i for i in order[: min(k, size)]]  # overflow of a full chunk is dropped
    return sorted(keep)


@pytest.mark.parametrize(("n", "chunks", "budget"), [(37, 16, 9), (37, 16, 30), (64, 16, 16), (12, 5, 11), (7, 16, 3)])
def test_faithful_matches_the_authors_rules(n, chunks, budget):
    ctx = random_context(seed=n + budget, n=n, budget=budget)
    if budget == 30:  # one chunk takes most of the attention: its share overflows and the authors drop it
        ctx.vision.cls[:, :3] += 5.0
    result = PRUNERS.create("holov", chunks=chunks, faithful=True).select(ctx)
    for b in range(3):
        expected = authors_holov(ctx.image_tokens[b], ctx.vision.cls[b], budget, chunks)
        assert result.keep[b][result.keep_mask[b]].tolist() == expected, f"sample {b}"
    if budget == 30:
        assert bool((result.lengths < budget).all())  # fewer than K: the overflow is gone
    with pytest.raises(ValueError):
        PRUNERS.create("holov", faithful=True, variance_scale="minmax")


def test_allocation_is_exact_capped_and_proportional():
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        c = 1 + trial % 9
        sizes = torch.randint(1, 6, (c,), generator=g)
        scores = torch.rand(4, c, generator=g) ** 3
        scores[0] = 0.0  # all-zero scores fall back to uniform
        budget = int(torch.randint(1, int(sizes.sum()) + 1, (1,), generator=g))
        alloc = allocate(scores, sizes, budget)
        assert (alloc.sum(1) == budget).all() and (alloc <= sizes).all() and (alloc >= 0).all()
        for b in range(4):
            assert alloc[b].tolist() == naive_allocation(scores[b].tolist(), sizes.tolist(), budget)
    # exact proportions when they are integers and nothing overflows
    alloc = allocate(torch.tensor([[1.0, 2.0, 1.0]]), torch.tensor([8, 8, 8]), 8)
    assert alloc.tolist() == [[2, 4, 2]]


@pytest.fixture(scope="module")
def llava64():
    return tiny_llava(image_size=64)  # N = 64 tokens, 16 chunks of 4


def eager_cls_attention(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """CLS -> patch attention of vision layer -2, mean over heads, from an eager copy of the tower."""
    tower = copy.deepcopy(model.model.vision_tower)
    tower.set_attn_implementation("eager")
    out = tower(pixel_values, output_attentions=True)
    return out.attentions[-2][:, :, 0, 1:].mean(dim=1)  # (B, N)


@pytest.mark.parametrize("budget", [5, 16, 40])
def test_tiny_llava_matches_naive_with_eager_attention(llava64, budget):
    model, processor = llava64
    inputs = make_inputs(processor, size=64)
    prepared = PrunedVLM(model, processor, method="holov", budget=budget).prepare(**inputs)
    attn = eager_cls_attention(model, inputs["pixel_values"])
    for b in range(2):
        expected = naive_holov(prepared.context.image_tokens[b], attn[b], budget)
        assert prepared.result.keep[b].tolist() == expected


def test_qwen_uses_the_authors_score_and_chunk_rule(qwen):
    """On Qwen2.5-VL: the authors' last-block received attention, and their chunk count max(1, int(1024/576 N/K))
    (N = 16: K = 6 -> 4 chunks, K = 2 -> 14, K = 16 -> 1); an explicit `chunks` overrides the rule."""
    model, processor = qwen
    inputs = make_inputs(processor)
    received = authors_qwen_score(model, inputs)
    for budget, chunks in [(6, 4), (2, 14), (16, 1), (9, 3)]:
        assert max(1, int((1024 / 576) * 16 / budget)) == chunks
        prepared = PrunedVLM(model, processor, method="holov", budget=budget).prepare(**inputs)
        for b in range(2):
            expected = naive_holov(prepared.context.image_tokens[b], received[b], budget, chunks=chunks)
            assert prepared.result.keep[b].tolist() == expected
    explicit = PrunedVLM(model, processor, method="holov", budget=6, chunks=16).prepare(**inputs)
    for b in range(2):
        expected = naive_holov(explicit.context.image_tokens[b], received[b], 6, chunks=16)
        assert explicit.result.keep[b].tolist() == expected


def test_llava_keeps_16_chunks_whatever_the_budget():
    ctx = random_context(seed=3, n=64, budget=4)
    result = PRUNERS.create("holov").select(ctx)
    for b in range(3):
        assert result.keep[b].tolist() == naive_holov(ctx.image_tokens[b], ctx.vision.cls[b], 4, chunks=16)


def test_text_free_changes_nothing():
    ctx = random_context(seed=1)
    free = dataclasses.replace(ctx, text_free=True)
    pruner = PRUNERS.create("holov")
    assert torch.equal(pruner.select(ctx).keep, pruner.select(free).keep)
    assert not PRUNERS.get("holov").reads_text


@pytest.mark.parametrize("name", ["llava", "qwen"])
def test_generate_smoke(name, llava, qwen):
    model, processor = {"llava": llava, "qwen": qwen}[name]
    vlm = PrunedVLM(model, processor, method="holov", budget=5)
    out = vlm.generate(**make_inputs(processor), max_new_tokens=3)
    assert out.shape[0] == 2 and out.shape[1] <= 3
    assert vlm(**make_inputs(processor)).selection_flops > 0
