"""MMTok: batched greedy coverage == a naive per-sample greedy; greedy vs exhaustive optimum; padding; text-free."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re

import pytest
import torch

from steprune import PrunedVLM
from steprune.pruners import PRUNERS, PruneContext
from steprune.pruners.keywords import keyword_rows
from steprune.pruners.mmtok import (
    coverage_matrix,
    coverage_matrix_t,
    dense_greedy_max_coverage,
    greedy_max_coverage,
    greedy_max_coverage_t,
)
from tests.inputs import make_inputs


def random_context(seed: int, b: int = 3, n: int = 20, length: int = 9, budget: int = 6, **kw) -> PruneContext:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, length, dtype=torch.bool)
    for i in range(b):  # left padding, a different prompt length per sample (one sample fully real)
        mask[i, length - max(1, length - 3 * i) :] = True
    return PruneContext(
        image_tokens=torch.randn(b, n, 8, generator=g),
        vision_features=torch.randn(b, n, 6, generator=g),
        text_embeds=torch.randn(b, length, 8, generator=g),
        text_mask=mask,
        budget=budget,
        grid=(1, n),
        **kw,
    )


def naive_mmtok(ctx: PruneContext, b: int, alpha=0.5, tau_tv=0.02, tau_vv=0.2, text=True) -> list[int]:
    """One sample, Python loops: build C row by row, then greedy over candidates one at a time."""
    x = [v / v.norm() for v in ctx.image_tokens[b].double()]
    xc = [v / v.norm() for v in ctx.vision_features[b].double()]
    z = [v / v.norm() for v, real in zip(ctx.text_embeds[b].double(), ctx.text_mask[b], strict=True) if real]
    n = len(x)

    def softmax(values: list[float]) -> list[float]:
        top = max(values)
        e = [math.exp(v - top) for v in values]
        return [v / sum(e) for v in e]

    rows = []
    if text:
        for t in z:
            rows.append([p / len(z) for p in softmax([float(t @ xj) / tau_tv for xj in x])])
    for xi in xc:
        scale = alpha / n if text else 1.0 / n
        rows.append([scale * q for q in softmax([float(xi @ xj) / tau_vv for xj in xc])])
    best = [0.0] * len(rows)
    chosen: list[int] = []
    for _ in range(ctx.budget):
        gains = []
        for j in range(n):
            gain = sum(max(0.0, row[j] - best[r]) for r, row in enumerate(rows))
            gains.append(-math.inf if j in chosen else gain)
        j = max(range(n), key=lambda i: (gains[i], -i))  # largest gain, then lowest index
        chosen.append(j)
        best = [max(best[r], row[j]) for r, row in enumerate(rows)]
    return sorted(chosen)


def coverage_value(cover: torch.Tensor, subset) -> float:
    """f(S) = sum_rows max_{j in S} C[row, j] for one (R, N) matrix."""
    return float(cover[:, list(subset)].max(dim=1).values.sum())


def exhaustive_optimum(cover: torch.Tensor, k: int) -> float:
    """max over all k-subsets of f(S), for one (R, N) matrix (every subset enumerated at once)."""
    subsets = torch.tensor(list(itertools.combinations(range(cover.shape[1]), k)))  # (S, k)
    return float(cover[:, subsets].max(dim=-1).values.sum(dim=0).max())


@pytest.mark.parametrize("budget", [1, 4, 11, 20])
@pytest.mark.parametrize("text_free", [False, True])
def test_matches_naive_greedy(budget, text_free):
    ctx = random_context(seed=budget, budget=budget, text_free=text_free)
    result = PRUNERS.create("mmtok").select(ctx)
    assert result.keep.shape == (3, budget) and bool(result.keep_mask.all())
    assert result.selection_flops > 0
    for b in range(3):
        assert result.keep[b].tolist() == naive_mmtok(ctx, b, text=not text_free), f"sample {b}"


def test_matches_naive_with_other_hyperparameters():
    ctx = random_context(seed=7, budget=5)
    result = PRUNERS.create("mmtok", alpha=2.0, tau_tv=0.1, tau_vv=0.05).select(ctx)
    for b in range(3):
        assert result.keep[b].tolist() == naive_mmtok(ctx, b, alpha=2.0, tau_tv=0.1, tau_vv=0.05)


def test_greedy_vs_exhaustive_optimum():
    bound = 1.0 - 1.0 / math.e
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        n = 4 + seed % 7  # 4..10 candidates
        rows = 3 + seed % 9
        kind = seed % 3
        if kind == 0:  # a raw non-negative matrix
            cover = torch.rand(2, rows, n, generator=g) ** 3
        else:  # the real MMTok construction on random embeddings
            x, xc = torch.randn(2, n, 5, generator=g), torch.randn(2, n, 4, generator=g)
            z = torch.randn(2, rows, 5, generator=g)
            cover = coverage_matrix(x, xc, z, torch.ones(2, rows, dtype=torch.bool), 0.5, 0.3 * kind, 0.2)
        for k in range(1, min(4, n) + 1):
            picks, value = greedy_max_coverage(cover, k)
            for b in range(2):
                greedy = coverage_value(cover[b], picks[b].tolist())
                assert value[b].item() == pytest.approx(greedy, rel=1e-5)
                optimum = exhaustive_optimum(cover[b], k)
                assert greedy >= bound * optimum - 1e-6, (seed, k)
                if k == 1:
                    assert greedy == pytest.approx(optimum, rel=1e-6)


def test_greedy_is_optimal_on_modular_instances():
    """One row per candidate (a diagonal C): f is modular, greedy picks the K largest diagonals = optimum."""
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        n = 5 + seed % 5
        diag = torch.rand(n, generator=g)
        cover = torch.diag(diag).unsqueeze(0)
        for k in range(1, 5):
            picks, value = greedy_max_coverage(cover, k)
            optimum = exhaustive_optimum(cover[0], k)
            assert value.item() == pytest.approx(optimum, rel=1e-6)
            assert sorted(picks[0].tolist()) == sorted(diag.argsort(descending=True)[:k].tolist())


def test_ties_go_to_the_lowest_index():
    cover = torch.ones(2, 3, 6)  # every candidate covers everything equally
    picks, _ = greedy_max_coverage(cover, 4)
    assert picks.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]


@pytest.mark.parametrize("dense_below", [0, 1 << 30])  # the lazy path, and every gain at every step
def test_lazy_greedy_picks_what_the_dense_greedy_picks(dense_below):
    """Random MMTok coverage matrices (text rows + vision rows, several temperatures): the same picks, in the same
    order, as the original dense greedy (kept as `dense_greedy_max_coverage`), and the same coverage value."""
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        b, n, length = 3, (20, 64, 150)[seed % 3], 7
        x, xc = torch.randn(b, n, 16, generator=g), torch.randn(b, n, 8, generator=g)
        z = torch.randn(b, length, 16, generator=g)
        mask = torch.ones(b, length, dtype=torch.bool)
        mask[1, :3] = False  # padded rows
        args = (x, xc, z, mask, 0.5, (0.02, 0.1, 1.0)[seed % 3], (0.2, 0.05)[seed % 2])
        cover = coverage_matrix(*args)
        k = (1, n // 3, n)[seed % 3]
        reference, value = dense_greedy_max_coverage(cover, k)
        picks, lazy_value, evaluated = greedy_max_coverage_t(coverage_matrix_t(*args), k, dense_below=dense_below)
        assert torch.equal(picks, reference), seed
        torch.testing.assert_close(lazy_value, value)
        if dense_below == 0 and k == n // 3:  # the lazy path computes a small share of the dense K * N gains
            assert int(evaluated.max()) < k * n // 2, (seed, evaluated.tolist())


@pytest.mark.parametrize("dense_below", [0, 1 << 30])
def test_lazy_greedy_breaks_exact_ties_like_the_dense_greedy(dense_below):
    """Coverage values on a 1/8 grid (every sum exact, so equal gains are equal bits in any order), with duplicated
    candidates and saturated rows: ties everywhere, each broken towards the lowest index by both greedies."""
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        b, r, n = 2, 3 + seed % 5, 6 + seed % 7
        cover = torch.randint(0, 3, (b, r, n), generator=g).float() / 8
        cover[:, :, n // 2] = cover[:, :, 0]  # an exact duplicate of candidate 0, further right
        cover[:, :, -1] = cover[:, :, 1]
        for k in (1, n // 2, n):
            reference, _ = dense_greedy_max_coverage(cover, k)
            picks, _, _ = greedy_max_coverage_t(
                cover.transpose(1, 2).contiguous(), k, refresh=2, dense_below=dense_below
            )
            assert torch.equal(picks, reference), (seed, k)
    assert greedy_max_coverage(torch.zeros(1, 4, 5), 3)[0].tolist() == [[0, 1, 2]]  # all gains 0: lowest first


def test_padding_rows_change_nothing():
    base = random_context(seed=3, b=2, length=6)
    g = torch.Generator().manual_seed(99)
    garbage = 50 * torch.randn(2, 5, 8, generator=g)  # 5 more padded rows in front, wild values
    padded = PruneContext(
        image_tokens=base.image_tokens,
        vision_features=base.vision_features,
        text_embeds=torch.cat([garbage, base.text_embeds], dim=1),
        text_mask=torch.cat([torch.zeros(2, 5, dtype=torch.bool), base.text_mask], dim=1),
        budget=base.budget,
        grid=base.grid,
    )
    pruner = PRUNERS.create("mmtok")
    a, b = pruner.select(base), pruner.select(padded)
    assert torch.equal(a.keep, b.keep)
    torch.testing.assert_close(a.extras["coverage"], b.extras["coverage"])


def test_text_free_differs_from_text_mode():
    pruner = PRUNERS.create("mmtok")
    differs = False
    for seed in range(5):
        ctx = random_context(seed=seed, budget=5)
        free = random_context(seed=seed, budget=5, text_free=True)
        differs |= not torch.equal(pruner.select(ctx).keep, pruner.select(free).keep)
    assert differs
    assert PRUNERS.get("mmtok").reads_text


@pytest.mark.parametrize("name", ["llava", "qwen"])
def test_tiny_models_match_naive_and_generate(name, llava, qwen):
    model, processor = {"llava": llava, "qwen": qwen}[name]
    inputs = make_inputs(processor)
    vlm = PrunedVLM(model, processor, method="mmtok", budget=6, tau_tv=0.01 if name == "qwen" else 0.02)
    prepared = vlm.prepare(**inputs)
    ctx = prepared.context
    assert not bool(ctx.text_mask.all()), "the batch should have left padding"
    for b in range(2):
        expected = naive_mmtok(ctx, b, tau_tv=0.01 if name == "qwen" else 0.02)
        assert prepared.result.keep[b].tolist() == expected
    out = vlm.generate(**inputs, max_new_tokens=3)
    assert out.shape[0] == 2 and out.shape[1] <= 3


AUTHORS_STOP_WORDS_TEXT = (  # the authors' NON_VISUAL_WORDS, alphabetically
    "a an and answer are at be been being but by did do does for from had has have he how i if into is it "
    "onto or question she so the then they to upon was we were what when where which who why with you"
)
AUTHORS_STOP_WORDS = set(AUTHORS_STOP_WORDS_TEXT.split())
AUTHORS_SUFFIXES = (
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
)


def authors_keywords(question: str) -> list[str]:
    """The authors' extract_keywords_simple: suffix prompts deleted, \\b\\w+\\b words, stop-words dropped."""
    for suffix in AUTHORS_SUFFIXES:
        question = question.replace(suffix, "")
    words = re.findall(r"\b\w+\b", question)
    return [w for w in words if w.lower() not in AUTHORS_STOP_WORDS] or words


def test_keyword_rows_follow_the_authors_filter():
    pieces = ("USER", ":", " What", " col", "our", " is", " the", " SQUARE", "?", "\n", "Answer the question using")
    pieces += (" a single word or phrase.", " ASSISTANT", ":", "")
    rows = keyword_rows(pieces)
    assert [p for p, keep in zip(pieces, rows, strict=True) if keep] == [" col", "our", " SQUARE"]
    assert authors_keywords("What colour is the SQUARE?\nAnswer the question using a single word or phrase.") == [
        "colour",
        "SQUARE",
    ]
    only_stop = ("USER", ":", " What", " is", " it", "?", " ASSISTANT", ":")
    assert [p for p, k in zip(only_stop, keyword_rows(only_stop), strict=True) if k] == [" What", " is", " it"]


@pytest.mark.parametrize("name", ["llava", "qwen"])
def test_faithful_covers_only_the_question_keywords(name, llava, qwen):
    model, processor = {"llava": llava, "qwen": qwen}[name]
    questions = (
        "What colour is the square?\nAnswer the question using a single word or phrase.",
        "Is there a circle in the image? yes no",
    )
    inputs = make_inputs(processor, questions=questions)
    vlm = PrunedVLM(model, processor, method="mmtok", budget=6, faithful=True)
    prepared = vlm.prepare(**inputs)
    ctx = prepared.context
    tokenizer = processor.tokenizer
    for b, question in enumerate(questions):
        keywords = {w.lower() for w in authors_keywords(question)}
        assert keywords == ({"colour", "square"} if b == 0 else {"there", "circle", "in", "image", "yes", "no"})
        real = [p for p, m in zip(ctx.text_pieces[b], ctx.text_mask[b].tolist(), strict=True) if m]
        ids = inputs["input_ids"][b][inputs["attention_mask"][b].bool()]
        ids = ids[ids != model.config.image_token_id]
        assert "".join(real) == tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        # in this tiny vocabulary every keyword is one token of the prompt: those rows, and only they, are covered
        expected = [p.strip().lower() in keywords for p in ctx.text_pieces[b]]
        assert sum(expected) == len(keywords)
        keyword_ctx = dataclasses.replace(ctx, text_mask=ctx.text_mask & torch.tensor([expected] * 2))
        assert prepared.result.keep[b].tolist() == naive_mmtok(keyword_ctx, b)
    default = PrunedVLM(model, processor, method="mmtok", budget=6).prepare(**inputs)
    assert default.context.text_pieces is None  # only a method that reads words pays for decoding
    assert not PRUNERS.create("mmtok").reads_words and PRUNERS.create("mmtok", faithful=True).reads_words
