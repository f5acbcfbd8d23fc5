"""Equal-FLOPs budgets: the budget at which an in-LLM method costs what a pre-LLM method costs at K tokens.

    from steprune.eval.flops_match import in_llm, match_budget

    probe = {k: v for k, v in collate(records[:8]).items() if isinstance(v, torch.Tensor)}
    match = match_budget(model, processor, "fastv", target_budget=32, num_tokens=144, text_tokens=20,
                         probe=probe)                       # pre-LLM target: uniform at K = 32
    match.budget, match.flops, match.target_flops           # FastV at `budget` costs ~ uniform at 32
    match.reachable                                         # False: even budget 1 costs more than the target

An in-LLM method (FastV, SparseVLM, PyramidDrop, DART: a pruner with `layer_drops`) runs its first layers on
all N visual tokens, so at the same budget it costs more prefill FLOPs than a method that selects before the
LLM. Its matched budget is found by bisection over integer budgets 1..N on the *measured* cost: the pruned
forward's own report (`PrunedVLM.selection_report` on a small probe batch: tokens alive per LLM stage and the
FLOPs the selection spent) costed with `measured_prefill_cost` — the world eval's accounting, per question,
selection included. The target is the same accounting of a pre-LLM method (default `uniform`, which costs
nothing to select) at K: the vision tower, the projector, the LLM prefill at K visual tokens and its
selection FLOPs. The cost is non-decreasing in the budget, so bisection finds the largest budget whose cost
does not exceed the target; of it and the next budget the closer one is the match. A match is `reachable`
when it lies within one visual token's cost of the target (`token_flops`: one more visual token through the
whole LLM at K); it is not when even budget 1 costs more (a shallow LLM, a short budget).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor
from transformers import PreTrainedModel

from steprune.eval.flops import llm_prefill_flops, measured_prefill_cost
from steprune.pruned_vlm import PrunedVLM
from steprune.pruners import PRUNERS
from steprune.pruners.contract import PrePrunerBase


def in_llm(method: str) -> bool:
    """Whether the registered `method` drops tokens inside the LLM (its class overrides `layer_drops`)."""
    return getattr(PRUNERS.get(method), "layer_drops", PrePrunerBase.layer_drops) is not PrePrunerBase.layer_drops


def probe_prefill_flops(vlm: PrunedVLM, probe: dict[str, Tensor], num_tokens: int, text_tokens: int) -> float:
    """Prefill FLOPs per question of `vlm` on the `probe` batch, as the world eval counts them (selection included)."""
    report = vlm.selection_report(**probe)
    stages = [(int(layer), int(k)) for layer, k in report.visual_tokens_per_stage]
    batch = report.result.keep.shape[0]
    kept = min(num_tokens, round(float(report.result.lengths.float().mean())))
    selection = report.selection_flops / batch
    return measured_prefill_cost(vlm.model.config, num_tokens, stages, kept, text_tokens, selection).total


def search_budget(cost: Callable[[int], float], target: float, low: int, high: int) -> int:
    """The budget in low..high whose cost is closest to `target`, for `cost` non-decreasing in the budget.

    Bisection for the largest budget with cost <= target (`low` when none is), then the closer of it and the next.
    """
    if cost(low) > target:
        return low
    lo, hi = low, high  # invariant: cost(lo) <= target; the answer is in lo..hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= target:
            lo = mid
        else:
            hi = mid - 1
    if lo < high and abs(cost(lo + 1) - target) < abs(cost(lo) - target):
        return lo + 1
    return lo


@dataclass(frozen=True)
class FlopsMatch:
    """One in-LLM method matched to a pre-LLM method's prefill FLOPs at `target_budget` (FLOPs per question)."""

    method: str
    target_method: str
    target_budget: int  # K of the pre-LLM target
    target_flops: float
    budget: int  # the in-LLM method's matched budget (1 when even that costs more than the target)
    flops: float  # its prefill FLOPs at `budget`
    token_flops: float  # one more visual token through the whole LLM at K: the matching tolerance

    @property
    def reachable(self) -> bool:
        return abs(self.flops - self.target_flops) <= self.token_flops

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reachable": self.reachable}


def match_budget(
    model: PreTrainedModel,
    processor: Any,
    method: str,
    target_budget: int,
    num_tokens: int,
    text_tokens: int,
    probe: dict[str, Tensor],
    target_method: str = "uniform",
    cache: dict[tuple[str, int], float] | None = None,
) -> FlopsMatch:
    """The budget of in-LLM `method` whose measured prefill FLOPs equal `target_method`'s at `target_budget`.

    `cache` (method, budget) -> FLOPs is shared across calls so each budget runs on the probe once.
    """
    assert in_llm(method), f"{method} selects before the LLM: it needs no FLOPs matching"
    assert not in_llm(target_method), f"the target {target_method} must select before the LLM"
    cache = {} if cache is None else cache

    def cost(name: str, budget: int) -> float:
        if (name, budget) not in cache:
            vlm = PrunedVLM(model, processor, method=name, budget=budget)
            cache[name, budget] = probe_prefill_flops(vlm, probe, num_tokens, text_tokens)
        return cache[name, budget]

    target = cost(target_method, target_budget)
    budget = search_budget(lambda b: cost(method, b), target, 1, num_tokens)
    text_config = model.config.get_text_config()
    token = llm_prefill_flops(text_config, text_tokens + target_budget + 1) - llm_prefill_flops(
        text_config, text_tokens + target_budget
    )
    return FlopsMatch(method, target_method, target_budget, target, budget, cost(method, budget), token)
