"""SparseVLM v1 (Zhang et al., ICML 2025): progressive in-LLM dropping scored by text "raters".

    PrunedVLM(model, processor, method="sparsevlm", budget=64)            # drops 576 -> 66 -> 30 -> 17 (LLaVA-7B)

Where: in-LLM. `select` keeps every token; `layer_drops` returns drops before layers 2, 6, 15 of a 32-layer LLM,
scaled to other depths like PyramidDrop (`scale_layers`: round half up of l * L / 32, clamped to 1..L-1,
strictly increasing where possible).

Raters (default `raters="input"`, as in the authors' v1 code: computed once, from the LLM *input* embeddings):
the candidates are the prompt tokens after the image (tokens before it cannot attend to it under causal
attention). With V (n, D) the visual tokens and T (m, D) the candidates,
    relevance_t = mean over visual tokens v of softmax_t(V T^T)[v, t]       (softmax over the candidates, no scaling)
and the raters are the candidates with relevance above the candidates' mean (which is 1/m); a sample whose
test selects none (m = 1) uses all its candidates. `raters="layer"` recomputes them at each drop from the
hidden states entering the drop layer (V: surviving visual tokens). Raters differ in number per sample: they are
gathered into a padded (B, Q) block with a weight mask, no per-sample loop.

Score at the drop before layer k: the softmax attention of layer k (its input norm, q/k and RoPE on the hidden
states entering it, causal + padding masked: `view.attention_rows(k, raters)`) from each rater to each surviving
visual token, averaged over heads and raters. Keep the top k_i; ties go to the lower index (stable sort).

Budget rule: the authors' v1 table (`sparse_token_dict` in their current `llava/model/language_model/score.py`,
for N = 576) wherever it has an entry — budget 64 -> 66/30/17 tokens kept at the three drops, 96 -> 238/48/26,
128 -> 303/110/36, 192 -> 300/200/110 — reproduced exactly. Any other (N, budget): the budget is mapped to the
576 scale (b = budget * 576 / N), each stage's count is interpolated linearly in b between the anchors
(0 -> 0/0/0, the four schedules, 576 -> 576/576/576), scaled by N / 576, rounded half up, clamped to 1..N and
kept non-increasing (so a scaled budget that lands on a table entry, e.g. N = 144 with budget 24, gets that
entry scaled). The budget is therefore a layer-averaged "equivalent tokens" target, as in the paper:
(2 * 576 + 4 * k1 + 9 * k2 + 17 * k3) / 32 = 61.7 / 93.1 / 123.9 / 188.2 for 64 / 96 / 128 / 192; the final count is
below the budget. `schedule()` gives the plan; the session reports `visual_tokens_per_stage`.

FLOPs: the q/k projections and attention rows are counted by the `LayerView`; the relevance products
(2 * B * n * T * D) are added here. Nothing is computed before the LLM.

Text-free mode (`ctx.text_free`): no text raters. Every surviving visual token rates: score_j = mean over the
visual tokens i >= j (the ones that can see j under causal attention) of the head-averaged attention i -> j.

Faithful mode (`faithful=True`, opt-in; the same option name as the other methods): the authors' positions — from
each drop on the kept tokens' rotary positions are compacted (position minus the visual tokens dropped before it;
decoding continues from each layer's cached length, as their `get_usable_length`), via `LayerDrop.renumber` — and
their k_i = min(schedule, surviving - 1). The drop layer itself already runs on the survivors (theirs: layer k on
all tokens), with compacted positions.

Differences from the authors' code (Gumpest/SparseVLMs; `faithful=True` undoes the positions and the forced
drop): batched with left padding (theirs: batch 1, prompt
offsets passed in); the attention row is computed explicitly from layer k's q/k so the model keeps SDPA; layer k
itself already runs on the survivors (the authors run layer k on all tokens, then prune its output — the scores
are the same, layer k's attention); k_i = min(schedule, surviving) where they force at least one drop
(v_token_num - 1); their table has only the four budgets (another RETAIN_TOKN is a KeyError there) and a v2
table (USE_VERSION=2_0) we do not use; we interpolate between its entries; kept tokens keep their original
rotary positions (theirs truncate position ids, i.e. compact); the recycling step (top 30% of the deleted
tokens clustered into extra merged tokens) is not implemented, since a LayerDrop can only select tokens, not insert
new ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from steprune.backbones.layer_view import LayerView
from steprune.pruners.contract import LayerDrop, PrePrunerBase, PruneContext, PruneResult
from steprune.pruners.pdrop import merge_stages, round_half_up, scale_layers, top_k_stable
from steprune.pruners.registry import PRUNERS

# budget (on N = 576) -> tokens kept after each of the three drops; 0 and 576 are interpolation anchors
ANCHORS_576: tuple[tuple[int, tuple[int, int, int]], ...] = (
    (0, (0, 0, 0)),
    (64, (66, 30, 17)),
    (96, (238, 48, 26)),
    (128, (303, 110, 36)),
    (192, (300, 200, 110)),
    (576, (576, 576, 576)),
)


def relevance(visual: Tensor, text: Tensor, candidates: Tensor) -> Tensor:
    """visual (B, n, D), text (B, T, D), candidates (B, T) bool -> (B, T) mean_v softmax_t(V T^T), 0 off-candidate."""
    logits = visual.float() @ text.float().transpose(1, 2)  # (B, n, T)
    logits = logits.masked_fill(~candidates.unsqueeze(1), float("-inf"))
    return logits.softmax(dim=-1).nan_to_num(0.0).mean(dim=1)


def above_mean(relevance: Tensor, candidates: Tensor) -> Tensor:
    """(B, T) bool raters: candidates above their mean relevance; all candidates where none is above."""
    mean = relevance.sum(dim=1, keepdim=True) / candidates.sum(dim=1, keepdim=True).clamp(min=1)
    raters = candidates & (relevance > mean)
    return raters | (candidates & ~raters.any(dim=1, keepdim=True))


@PRUNERS.register("sparsevlm")
class SparseVLMPruner(PrePrunerBase):
    """SparseVLM v1: text raters' attention, progressive top-k at three layers (see the module docstring)."""

    reads_text = True

    def __init__(
        self,
        layers: Sequence[float] = (2, 6, 15),
        raters: Literal["input", "layer"] = "input",
        faithful: bool = False,
    ) -> None:
        if len(layers) != 3 or list(layers) != sorted(layers) or layers[0] <= 0:
            raise ValueError(f"layers must be three increasing positive indices (32-layer scale), got {layers}")
        if raters not in ("input", "layer"):
            raise ValueError(f"raters must be 'input' or 'layer', got {raters!r}")
        self.layers = tuple(layers)
        self.raters = raters
        self.faithful = faithful

    def schedule(self, num_tokens: int, num_layers: int, budget: int) -> list[tuple[int, int]]:
        """[(layer, visual tokens kept from that layer on)] for N = `num_tokens` on a `num_layers`-deep LLM."""
        n = num_tokens
        b = min(budget * 576 / n, 576.0)
        segments = zip(ANCHORS_576[:-1], ANCHORS_576[1:], strict=True)
        (b0, lo), (b1, hi) = next((a, c) for a, c in segments if a[0] <= b <= c[0])
        t = (b - b0) / (b1 - b0)
        counts, previous = [], n
        for low, high in zip(lo, hi, strict=True):
            previous = min(max(round_half_up((low + t * (high - low)) * n / 576), 1), previous)
            counts.append(previous)
        return merge_stages(scale_layers(self.layers, num_layers), counts)

    def select(self, ctx: PruneContext) -> PruneResult:
        return PruneResult.keep_all(ctx.batch_size, ctx.num_tokens, ctx.device)

    def layer_drops(self, ctx: PruneContext, num_layers: int) -> list[LayerDrop]:
        stages = self.schedule(ctx.num_tokens, num_layers, ctx.budget)
        cache: dict[str, Tensor] = {}  # input-embedding raters, (re)computed at the first drop of each prefill
        return [
            LayerDrop(layer, partial(self.choose, ctx=ctx, keep=k, cache=cache, first=i == 0), renumber=self.faithful)
            for i, (layer, k) in enumerate(stages)
        ]

    def choose(
        self, view: LayerView, ctx: PruneContext, keep: int, cache: dict[str, Tensor], first: bool = True
    ) -> Tensor:
        """(B, k) indices into `view.image_positions` of the visual tokens kept from `view.layer` on."""
        image = view.image_positions  # (B, n)
        b, n = image.shape
        keep = min(keep, n - 1) if self.faithful and n > 1 else keep  # the authors drop at least one token
        if ctx.text_free:
            attention = view.attention_rows(view.layer, image).mean(dim=1)  # (B, n, S) visual rows
            a = attention.gather(2, image.unsqueeze(1).expand(-1, n, -1))  # (B, n, n), lower triangular
            seen_by = torch.arange(n, 0, -1, device=a.device, dtype=a.dtype)  # rows i >= j
            return top_k_stable(a.sum(dim=1) / seen_by, min(keep, n))
        if first:
            cache.clear()
        raters = self.rater_mask(view, ctx, cache)  # (B, S) bool
        q = int(raters.sum(dim=1).max())
        order = torch.sort((~raters).to(torch.uint8), dim=1, stable=True).indices[:, :q]  # raters first
        weight = raters.gather(1, order).float()  # (B, Q)
        order = torch.where(weight.bool(), order, view.valid.shape[1] - 1)  # padded slots query the last token
        attention = view.attention_rows(view.layer, order).mean(dim=1)  # (B, Q, S)
        to_image = attention.gather(2, image.unsqueeze(1).expand(-1, q, -1))  # (B, Q, n)
        scores = (to_image * weight.unsqueeze(-1)).sum(dim=1) / weight.sum(dim=1, keepdim=True)  # (B, n)
        return top_k_stable(scores, min(keep, n))

    def rater_mask(self, view: LayerView, ctx: PruneContext, cache: dict[str, Tensor]) -> Tensor:
        """(B, S) bool: the rater positions in the sequence entering `view.layer`."""
        hidden, image = view.hidden_states, view.image_positions  # (B, S, D), (B, n)
        b, s, d = hidden.shape
        after = torch.arange(s, device=hidden.device).unsqueeze(0) > image[:, -1:]
        candidates = view.text_positions & after  # (B, S) prompt tokens after the image
        if self.raters == "layer":
            visual = hidden.gather(1, image.unsqueeze(-1).expand(-1, -1, d))  # (B, n, D)
            view.flops[0] += 2.0 * b * image.shape[1] * s * d
            return above_mean(relevance(visual, hidden, candidates), candidates)
        # "input": prompt embeddings are left-padded and right-aligned, as is the sequence: the text after the
        # image is the tail of both, so the last L_t sequence columns line up with ctx.text_embeds
        length = ctx.text_embeds.shape[1]
        if "tail" not in cache:
            tail = candidates[:, s - length :]  # (B, L_t)
            cache["tail"] = above_mean(relevance(ctx.image_tokens, ctx.text_embeds, tail), tail)
            view.flops[0] += 2.0 * b * ctx.num_tokens * length * d
        raters = torch.zeros_like(candidates)
        raters[:, s - length :] = cache["tail"]
        return raters
