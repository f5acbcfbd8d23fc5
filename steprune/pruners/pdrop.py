"""PyramidDrop (Xing et al., CVPR 2025): drop visual tokens inside the LLM in stages, ranked by last-token attention.

    PrunedVLM(model, processor, method="pdrop", budget=64)                       # budget-driven pyramid
    PrunedVLM(model, processor, method="pdrop", ratios=(0.5, 0.25, 0.125))       # the paper's fixed schedule

Where: in-LLM. `select` keeps every token; `layer_drops` returns one `LayerDrop` per stage boundary. Defaults
(32-layer LLaVA-7B): boundaries before layers 8, 16, 24 (the paper's "after layers 8/16/24" with 0-based indexing:
layers 0-7 form stage 1), scaled to other depths by `scale_layers` (round half up of l * L / 32, clamped to
1..L-1, strictly increasing where the depth allows; a repeated layer is a zero-width stage and only its last
count is applied).

Score: at boundary k the last prompt token's softmax attention over the surviving visual tokens, computed with
*layer k's* input norm, q/k projections and RoPE on the hidden states entering layer k (`view.last_token_attention(k)`
— the paper's "next layer's norm + q/k": the first layer of the next stage), mean over heads. Keep the top k_i;
ties go to the lower index (stable descending sort), so the kept set is deterministic.

Budget rule (default, `ratios=None`): the schedule is chosen so that the layer-averaged "equivalent tokens"
equal `ctx.budget`:  equivalent = (L1 * N + sum_i (L_{i+1} - L_i) * k_i) / L, with L_{S+1} = L, boundaries
L1 < L2 < L3 and the pyramid k_i = k1 * decay^(i-1) (decay 0.5: k1, k1/2, k1/4 as in the paper), so
k1 = (budget * L - L1 * N) / sum_i (L_{i+1} - L_i) * decay^(i-1), clamped to 1..N, each k_i rounded half up.
With the boundaries at 8/16/24 of 32 the average cannot fall below 8 * N / 32 (144 of 576), so when
`shift_layers` is on the boundaries are moved earlier *with their proportions kept* — candidates
layers * j / layers[0] for j = layers[0], ..., 1 (8/16/24, 7/14/21, ..., 1/2/3) — and the latest candidate whose
first stage still keeps at least the budget (k1 >= budget: the pyramid starts above its average) is used;
failing all (a shallow LLM, where the first layer alone already holds most of the average), the earliest
boundaries with k1 = budget: the pyramid then starts at the budget and the equivalent count exceeds it (3-layer
world base, N = 144, budget 16: drops before layers 1 and 2 keeping 8 / 4, equivalent 52) instead of collapsing
to one token for every budget. LLaVA-7B, N = 576: budget 192 -> drops at 6/12/18 keeping 215/108/54; 128 -> 4/8/12,
163/81/41; 64 -> 2/4/6, 94/47/24; the paper's own average (270) -> 8/16/24 keeping 288/144/72.
The equivalent count can miss the budget only at the extremes (k1 clamped to N or to 1). Tokens kept after each
drop are reported by the hook session (`visual_tokens_per_stage`); `schedule()` gives the plan.
`ratios=(...)` restores the paper's fixed schedule: stage i keeps round(N * ratio_i) of the *original* N (the
budget is then ignored).

FLOPs: `select` costs nothing; the drops' q/k projections and attention rows are counted by the `LayerView`
(the session adds them to `selection_flops`), the head mean here.

Text-free mode (`ctx.text_free`): the query is the last surviving *visual* token instead of the last prompt
token; under causal attention it has not seen the question, so the ranking does not depend on the prompt.

Faithful mode (`faithful=True`, opt-in; the same option name as the other methods): the authors' positions —
from each drop on, the kept tokens' rotary positions are renumbered contiguously (position minus the visual tokens
dropped before it) and decoding continues from the shortened length, as their `pdrop_forward` does in prefill
and decode (`LayerDrop.renumber`) — and their int() truncation of N * ratio under `ratios`. Later drops then
score with the renumbered positions, so the kept sets differ from the default's after the first drop.

Differences from the authors' code (Cooperx521/PyramidDrop; `faithful=True` undoes the positions and the
rounding): batched (no per-sample loop; left padding, the last
prompt token sits at S - 1) instead of right-padded per-sample loops with a stored prompt length; counts rounded
half up instead of int() truncation; GQA keys repeated per head; kept tokens keep their *original* rotary
positions (the in-LLM session keeps positions for every in-LLM method) where the authors renumber positions
contiguously after each drop; the budget-driven schedule is ours (the paper fixes ratios and boundaries).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor

from steprune.backbones.layer_view import LayerView
from steprune.pruners.contract import LayerDrop, PrePrunerBase, PruneContext, PruneResult
from steprune.pruners.registry import PRUNERS

REFERENCE_DEPTH = 32  # layer indices in the papers refer to 32-layer LLaVA-1.5-7B


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def scale_layers(layers: Sequence[float], num_layers: int) -> list[int]:
    """Map 32-layer indices to `num_layers`: round(l * L / 32) in 1..L-1, strictly increasing where possible."""
    if num_layers < 2:
        raise ValueError(f"in-LLM dropping needs at least 2 decoder layers, got {num_layers}")
    out = [min(max(round_half_up(x * num_layers / REFERENCE_DEPTH), 1), num_layers - 1) for x in layers]
    for i in range(1, len(out)):  # push up to strictly increasing ...
        out[i] = max(out[i], out[i - 1] + 1)
    for i in range(len(out) - 1, -1, -1):  # ... then pull back under L - 1 (ties remain when the model is too shallow)
        out[i] = max(min(out[i], num_layers - len(out) + i), 1)
    return out


def merge_stages(layers: Sequence[int], counts: Sequence[int]) -> list[tuple[int, int]]:
    """(layer, keep) stages; a layer named twice (zero-width stage) keeps only its last count."""
    merged: dict[int, int] = {}
    for layer, count in zip(layers, counts, strict=True):
        merged[layer] = count
    return sorted(merged.items())


def equivalent_tokens(stages: Sequence[tuple[int, int]], num_tokens: int, num_layers: int) -> float:
    """Layer-averaged visual tokens: (L1 * N + sum_i (L_{i+1} - L_i) * k_i) / L."""
    bounds = [layer for layer, _ in stages] + [num_layers]
    total = bounds[0] * num_tokens + sum((bounds[i + 1] - bounds[i]) * k for i, (_, k) in enumerate(stages))
    return total / num_layers


def top_k_stable(scores: Tensor, k: int) -> Tensor:
    """(B, n) scores -> (B, k) indices of the k largest, ascending; ties prefer the lower index."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return order.sort(dim=1).values


@PRUNERS.register("pdrop")
class PyramidDropPruner(PrePrunerBase):
    """PyramidDrop: staged in-LLM dropping by the last prompt token's attention (see the module docstring)."""

    reads_text = True

    def __init__(
        self,
        layers: Sequence[float] = (8, 16, 24),
        decay: float = 0.5,
        ratios: Sequence[float] | None = None,
        shift_layers: bool = True,
        faithful: bool = False,
    ) -> None:
        if len(layers) == 0 or list(layers) != sorted(layers) or layers[0] <= 0:
            raise ValueError(f"layers must be positive and increasing (32-layer scale), got {layers}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if ratios is not None and (len(ratios) != len(layers) or not all(0.0 < r <= 1.0 for r in ratios)):
            raise ValueError(f"ratios must give one ratio in (0, 1] per layer {tuple(layers)}, got {ratios}")
        self.layers = tuple(layers)
        self.decay = decay
        self.ratios = None if ratios is None else tuple(ratios)
        self.shift_layers = shift_layers
        self.faithful = faithful

    def schedule(self, num_tokens: int, num_layers: int, budget: int) -> list[tuple[int, int]]:
        """[(layer, visual tokens kept from that layer on)] for N = `num_tokens` on a `num_layers`-deep LLM."""
        n = num_tokens
        if self.ratios is not None:
            rounding = math.floor if self.faithful else round_half_up  # the authors: int(N * ratio)
            counts = [min(max(int(rounding(n * r)), 1), n) for r in self.ratios]
            return merge_stages(scale_layers(self.layers, num_layers), counts)
        steps = range(max(round_half_up(self.layers[0]), 1), 0, -1) if self.shift_layers else [self.layers[0]]
        for j in steps:
            bounds = scale_layers([x * j / self.layers[0] for x in self.layers], num_layers)
            ends = bounds[1:] + [num_layers]
            weight = sum((ends[i] - bounds[i]) * self.decay**i for i in range(len(bounds)))
            k1 = min(max((budget * num_layers - bounds[0] * n) / weight, 1.0), float(n))
            if k1 >= budget:
                break
        else:  # too shallow to reach the budget on average: the pyramid starts at the budget instead of at 1
            k1 = float(min(budget, n))
        counts, previous = [], n
        for i in range(len(bounds)):
            previous = min(max(round_half_up(k1 * self.decay**i), 1), previous)
            counts.append(previous)
        return merge_stages(bounds, counts)

    def select(self, ctx: PruneContext) -> PruneResult:
        return PruneResult.keep_all(ctx.batch_size, ctx.num_tokens, ctx.device)

    def layer_drops(self, ctx: PruneContext, num_layers: int) -> list[LayerDrop]:
        stages = self.schedule(ctx.num_tokens, num_layers, ctx.budget)
        choose = partial(self.choose, text_free=ctx.text_free)
        return [LayerDrop(layer, partial(choose, keep=k), renumber=self.faithful) for layer, k in stages]

    @staticmethod
    def choose(view: LayerView, keep: int, text_free: bool = False) -> Tensor:
        """(B, k) indices into `view.image_positions` of the visual tokens kept from `view.layer` on."""
        image = view.image_positions  # (B, n)
        if text_free:
            attention = view.attention_rows(view.layer, image[:, -1:])[:, :, 0]  # (B, H, S) last visual token's row
        else:
            attention = view.last_token_attention(view.layer)  # (B, H, S) last prompt token's row
        scores = attention.mean(dim=1).gather(1, image)  # (B, n)
        view.flops[0] += float(attention.numel())  # head mean
        return top_k_stable(scores, min(keep, image.shape[1]))
