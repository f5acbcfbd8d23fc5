"""HoloV (NeurIPS 2025): spread the budget over contiguous chunks by a holistic chunk score.

    PRUNERS.create("holov").select(ctx)            # 16 chunks on LLaVA, the authors' rule on Qwen2.5-VL

Where it runs: after the projector, before the LLM. It reads the projected tokens `ctx.image_tokens`
and the CLS -> patch attention of vision layer -2, averaged over heads (`ctx.vision.cls_attention`); on
Qwen2.5-VL (no CLS) the authors' score, the attention each merged token receives in the tower's last block
(`QwenVisionAccess`).

Chunks (`chunks=None`, the default, follows the authors): 16 on a CLS tower (LLaVA, their `utils.HoloV` call);
on a CLS-less tower (Qwen2.5-VL) their Qwen rule max(1, int((1024 / 576) * N / K)) — 1024/576 ~ 1.78, e.g.
16 chunks at K = N / 9. An int is used on every tower.

Score. The N tokens (row-major) are cut into C contiguous chunks with `torch.tensor_split`
semantics (the first N % chunks chunks get one token more; at most N chunks). With a_i = 1e3 times the
attention of token i and S the cosine-similarity matrix of the chunk's n tokens, the *within-chunk
similarity variance* of token i is the variance of its n - 1 off-diagonal entries,
    mu_i = sum_{j != i} S_ij / (n - 1),   v_i = sum_{j != i} (S_ij - mu_i)^2 / (n - 1)   (0 when n = 1),
and the chunk score is  mean_i(a_i) + weight * rescaled variance,  weight = 0.09, where the rescaling is
- "attention" (default, the authors'): v is scaled per chunk to the magnitude of the attention term,
  score = mean(a) + weight * mean(v) * mean|a| / (mean|v| + 1e-6). Since a, v >= 0 this is
  ~1.09 * mean(a) whenever the chunk's variance is not ~0: the variance barely moves the allocation.
- "minmax": the chunk means mean(v) are min-max rescaled across the chunks of a sample to [0, 1]
  (denominator + 1e-6), score = mean(a) + weight * that — a real diversity bonus.
Budget: K is split across chunks in proportion to their scores (largest-remainder rounding, ties to the
lower chunk), capped by chunk size; the overflow of full chunks is redistributed the same way over the
others until exactly K are allocated. Inside a chunk the top tokens by attention are kept (ties to the
lower index). Output in original order. Text-free: HoloV never reads the prompt (no change).

Faithful mode (`faithful=True`, opt-in; the same option name as the other methods): the authors' rules for
the three differences below that change the kept set — the variance counts the zeroed diagonal, a 1-token
chunk scores its raw attention (no 1e3), and the allocation is theirs: w = score / (sum(score) + 1e-6),
floor(w * K) per chunk, one more token for each of the top-(K - sum) weights (ties to the lower chunk), capped
by the chunk size with the overflow dropped — so K or fewer real tokens (`PruneResult` ragged; they pad the
rest with zero-feature tokens, which the contract cannot express). Needs variance_scale="attention".

Deliberate differences from the authors' code (obananas/HoloV `utils.HoloV`; `faithful=True` undoes the first two):
- Their variance counts the zeroed diagonal as an entry (adds mu_i^2 / (n - 1)); ours uses only the
  off-diagonal similarities. Their 1-token chunks score mean(attention) without the 1e3 factor; ours
  score 1e3 * attention (v = 0).
- They round with floor + one extra token for each of the top-weight chunks and drop the overflow of full
  chunks, then zero-pad to K; we use largest remainders and redistribute, so exactly K real tokens.
- Per-sample Python loops -> batched; chunks padded to the largest chunk size. Their kept tokens enter the LLM
  chunk by chunk in attention order (positions follow the tokens); ours in spatial order, also when faithful.
- Qwen2.5-VL: their scores stay in the tower's window order while the tokens are in spatial order (see
  `QwenVisionAccess`); ours follow the tokens.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from steprune.pruners.contract import PrePrunerBase, PruneContext, PruneResult
from steprune.pruners.registry import PRUNERS
from steprune.pruners.visionzip import access_flops, descending_order, require_vision

EPS = 1e-6


def chunk_sizes(num_tokens: int, chunks: int) -> list[int]:
    """Sizes of `torch.tensor_split(range(num_tokens), min(chunks, num_tokens))`."""
    c = min(chunks, num_tokens)
    return [num_tokens // c + (1 if i < num_tokens % c else 0) for i in range(c)]


def authors_chunks(num_tokens: int, budget: int, has_cls: bool) -> int:
    """The authors' chunk count: 16 on LLaVA (CLS tower); max(1, int((1024 / 576) * N / K)) on Qwen2.5-VL."""
    return 16 if has_cls else max(1, int((1024 / 576) * num_tokens / budget))


def authors_allocate(scores: Tensor, sizes: Tensor, budget: int) -> Tensor:
    """The authors' split of `budget` over chunks (B, C): floor of the proportional share, one extra token for
    each of the top-(budget - floor sum) weights (ties to the lower chunk), capped by `sizes` (overflow dropped)."""
    weights = scores.double() / (scores.double().sum(1, keepdim=True) + EPS)  # (B, C)
    alloc = (weights * budget).floor().long()
    extra = (budget - alloc.sum(1, keepdim=True)).clamp_min(0)  # (B, 1)
    alloc = alloc + (ranks(weights) < extra).long()
    return torch.minimum(alloc, sizes)


def ranks(scores: Tensor) -> Tensor:
    """Rank (0 = largest) of each entry along the last dim; ties rank the lower index first."""
    order = descending_order(scores)
    return torch.empty_like(order).scatter_(
        -1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    )


def allocate(scores: Tensor, sizes: Tensor, budget: int) -> Tensor:
    """Split `budget` over chunks (B, C) in proportion to `scores`, capped by `sizes` (C,); sums to budget.

    Largest-remainder rounding among the chunks still open; full chunks' overflow is redistributed over the
    open ones in the next round (each round closes a chunk or finishes, so at most C rounds).
    """
    b, c = scores.shape
    weights = scores.double().clamp_min(0)
    alloc = torch.zeros(b, c, dtype=torch.long, device=scores.device)
    remaining = torch.full((b,), budget, dtype=torch.long, device=scores.device)
    for _ in range(c):
        if not bool((remaining > 0).any()):
            break
        open_ = alloc < sizes
        w = torch.where(open_, weights, 0.0)
        w = torch.where(w.sum(1, keepdim=True) > 0, w, open_.double())  # all-zero scores: uniform
        quota = w / w.sum(1, keepdim=True).clamp_min(1e-300) * remaining.unsqueeze(1)  # (B, C); 0 when all full
        base = quota.floor().long()
        extra = remaining - base.sum(1)  # (B,)
        frac = torch.where(open_, quota - base, -1.0)
        new = torch.minimum(alloc + base + (ranks(frac) < extra.unsqueeze(1)).long(), sizes)
        remaining = remaining - (new - alloc).sum(1)
        alloc = new
    assert bool((remaining == 0).all()), "allocation did not reach the budget"
    return alloc


@PRUNERS.register("holov")
class HoloVPruner(PrePrunerBase):
    """Chunk-wise budget allocation by attention + similarity variance; see the module docstring."""

    reads_text = False

    def __init__(
        self,
        chunks: int | None = None,
        weight: float = 0.09,
        variance_scale: Literal["attention", "minmax"] = "attention",
        layer: int = -2,
        faithful: bool = False,
    ) -> None:
        if faithful and variance_scale != "attention":
            raise ValueError("faithful=True is the authors' attention-scaled variance; use variance_scale='attention'")
        if chunks is not None and chunks < 1:
            raise ValueError(f"chunks must be >= 1 (or None: the authors' rule), got {chunks}")
        if variance_scale not in ("attention", "minmax"):
            raise ValueError(f"variance_scale must be 'attention' or 'minmax', got {variance_scale!r}")
        self.chunks = chunks
        self.weight = weight
        self.variance_scale = variance_scale
        self.layer = layer
        self.faithful = faithful

    def select(self, ctx: PruneContext) -> PruneResult:
        access = require_vision(ctx, "holov")
        b, n, d = ctx.image_tokens.shape
        device = ctx.device
        chunks = authors_chunks(n, ctx.budget, access.has_cls) if self.chunks is None else self.chunks
        sizes_list = chunk_sizes(n, chunks)
        c, s = len(sizes_list), max(sizes_list)
        sizes = torch.tensor(sizes_list, device=device)  # (C,)
        starts = sizes.cumsum(0) - sizes
        slot = torch.arange(s, device=device)
        valid = slot < sizes.unsqueeze(1)  # (C, s): real tokens of the padded chunk layout
        layout = (starts.unsqueeze(1) + slot).clamp_max(n - 1)  # (C, s) token index of each slot

        x = F.normalize(ctx.image_tokens.float(), dim=-1, eps=EPS)[:, layout.flatten()].view(b, c, s, d)
        sim = x @ x.transpose(-1, -2)  # (B, C, s, s)
        pairs = valid.unsqueeze(2) & valid.unsqueeze(1) & ~torch.eye(s, dtype=torch.bool, device=device)
        denom = (sizes - 1).clamp_min(1).view(1, c, 1).double()
        sim = sim.double().masked_fill(~pairs, 0.0)
        mu = sim.sum(-1) / denom  # (B, C, s)
        var = ((sim - mu.unsqueeze(-1)).square() * pairs).sum(-1) / denom  # (B, C, s), 0 on padding
        if self.faithful:  # the authors' variance also counts the zeroed diagonal: (0 - mu_i)^2
            var = var + (mu.square() / denom).masked_fill(~valid, 0.0)

        attn = access.cls_attention(layer=self.layer, reduce="mean").double()  # (B, N)
        a = 1e3 * attn[:, layout.flatten()].view(b, c, s).masked_fill(~valid, 0.0)
        mean_a, mean_v = a.sum(-1) / sizes, var.sum(-1) / sizes  # (B, C)
        if self.variance_scale == "attention":
            bonus = mean_v * (a.abs().sum(-1) / sizes) / (var.abs().sum(-1) / sizes + EPS)
        else:
            low, high = mean_v.min(1, keepdim=True).values, mean_v.max(1, keepdim=True).values
            bonus = (mean_v - low) / (high - low + EPS)
        score = mean_a + self.weight * bonus  # (B, C)
        if self.faithful:  # a 1-token chunk scores its raw attention; their allocation
            score = torch.where(sizes == 1, mean_a / 1e3, score)
            alloc = authors_allocate(score, sizes, ctx.budget)
        else:
            alloc = allocate(score, sizes, ctx.budget)

        inside = ranks(a.masked_fill(~valid, float("-inf")))  # (B, C, s) rank by attention in the chunk
        keep_slot = (inside < alloc.unsqueeze(-1)) & valid
        chosen = torch.zeros(b, n, dtype=torch.bool, device=device)
        chosen[:, layout[valid]] = keep_slot[:, valid]
        flops = access_flops(access, self.layer, cls=True) + 2.0 * b * c * s * s * d + 3.0 * b * n * d
        return PruneResult.from_mask(chosen, selection_flops=flops, chunk_scores=score.float(), allocation=alloc)
