"""Equal-FLOPs budgets: bisection on a known cost, and matched in-LLM budgets on a tiny 8-layer LLaVA.

The tolerance of a match is one visual token's cost: the FLOPs of one more visual token through the whole LLM.
"""

from __future__ import annotations

import pytest
import torch

from steprune.eval.flops_match import in_llm, match_budget, search_budget
from steprune.pruners import PRUNERS
from tests.inputs import make_inputs


def test_in_llm_methods_are_the_ones_with_layer_drops():
    assert {m for m in PRUNERS.names() if in_llm(m)} == {"fastv", "sparsevlm", "pdrop", "dart"}


def test_search_budget_finds_the_closest_budget():
    calls = []

    def cost(b: int) -> float:
        calls.append(b)
        return 10.0 * b + 3.0

    assert search_budget(cost, 57.9, 1, 144) == 5  # 53 and 63: 53 is closer
    assert search_budget(cost, 59.0, 1, 144) == 6  # 53 and 63: 63 is closer
    assert len(set(calls)) <= 2 * 9  # bisection: ~log2(144) evaluations per search
    assert search_budget(cost, 1.0, 1, 144) == 1  # unreachable: the cheapest budget
    assert search_budget(cost, 1e9, 1, 144) == 144


@pytest.fixture(scope="module")
def deep_llava():
    from steprune.backbones.tiny import tiny_llava

    model, processor = tiny_llava(patch_size=4, text_layers=8)  # 64 visual tokens, FastV drops before layer 1
    probe = {k: v for k, v in make_inputs(processor).items() if isinstance(v, torch.Tensor)}
    return model, processor, probe


@pytest.mark.parametrize(("method", "k"), [("fastv", 16), ("fastv", 32), ("dart", 32), ("sparsevlm", 32)])
def test_matched_budget_costs_the_target_within_one_token(deep_llava, method, k):
    model, processor, probe = deep_llava
    text = probe["input_ids"].shape[1] - 64
    match = match_budget(model, processor, method, k, 64, text, probe)
    assert match.reachable and abs(match.flops - match.target_flops) <= match.token_flops
    assert 1 <= match.budget < k  # its first layers see all 64 tokens: fewer survive at equal FLOPs
    assert match.target_method == "uniform" and match.target_budget == k


def test_an_unreachable_target_is_reported(deep_llava):
    model, processor, probe = deep_llava
    match = match_budget(model, processor, "fastv", 4, 64, 20, probe)  # layer 0 alone sees 64 + 20 tokens
    assert match.budget == 1 and match.flops > match.target_flops and not match.reachable
    assert match.as_dict()["reachable"] is False
