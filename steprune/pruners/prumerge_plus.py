"""PruMerge+ (Shang et al., 2024): CLS-attention outliers plus a uniform grid, each merged with its cluster.

Where: after the vision tower and projector, before the LLM (`select`); adaptive, K <= budget per sample.

Score: CLS -> patch attention of the **last** vision layer, mean over heads
(`ctx.vision.cls_attention(layer=-1, reduce="mean")`; on Qwen2.5-VL, which has no CLS, the HoloV authors'
score: the attention each merged token receives in the tower's last block, `QwenVisionAccess`).

Selection, per sample (vectorised over the batch):
1. Outliers: tokens whose score is above Q3 + 1.5 IQR (quartiles with linear interpolation, as
   `numpy.percentile`); n_out of them.
2. Uniform tokens, as the authors: step = floor(N / max(n_out, 1)), stride = max(floor(step / 3), 1),
   every token whose index is a multiple of the stride (about 3 * n_out tokens; PruMerge+ ~ 4x PruMerge).
3. Cap at `ctx.budget` (ours; the authors have no budget): when outliers + uniform tokens fit in the budget,
   that set is kept exactly as the authors' rule gives it (so budget = N never removes a token the method
   keeps); otherwise, if n_out >= budget, the top-`budget` outliers only; else the stride is widened to the
   smallest s >= the authors' stride with |outliers + multiples of s| <= budget (s = N always fits: index 0).
   Ties (top-k) go to the lower index.
4. Merge: for each kept token i, its `neighbours` (32) most similar *other* tokens by cosine similarity of
   the last vision layer's keys (all heads concatenated, CLS dropped; on Qwen the merged tokens
   themselves; ties to the lower index). merged_i = x_i + sum_j w_j x_j with x the projected tokens
   (`ctx.image_tokens`, LLM space) and w_j = a_j / sum_{all N patches} a — the CLS attention renormalised
   over the patches, so all tokens' weights sum to 1 and a cluster adds a small, attention-sized share.

Result: ragged `PruneResult.from_mask` (spatial order), `merged` aligned with `keep`, zero rows on padding;
`extras["num_outliers"]` (B,). Reads no text, so text-free mode changes nothing. Defaults: neighbours=32.

Differences from the authors' code (`token_prune_merge_advanced_plus`, LLaVA-PruMerge `clip_encoder.py`):
- they merge CLIP features before the projector; steprune's contract merges in LLM space (after the
  projector, a nonlinear MLP), so the merge is applied to projected tokens;
- their CLS attention is one head over the full width (q k^T / sqrt(C)), not renormalised over patches;
  we average the per-head softmax of the tower (same ranking role) and renormalise over patches;
- their quartiles are taken over the whole batch flattened (batch size 1); ours are per sample;
- their uniform sequence is `arange(0, 575, stride)` (hard-coded N-1) and crashes when no outlier exists;
  ours is every multiple of the stride in 0..N-1, with n_out clamped to 1 in the step;
- they also append one extra token (attention-weighted sum of all pruned tokens) without a position; the
  contract has no slot for it, so it is dropped; kept tokens keep spatial order (theirs: attention order);
- the cap at the budget is ours (they have no budget).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from steprune.pruners.contract import PrePrunerBase, PruneContext, PruneResult
from steprune.pruners.registry import PRUNERS
from steprune.pruners.visionzip import access_flops


def adaptive_keep(scores: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    """(B, N) bool: IQR outliers of `scores` (B, N) plus a uniform stride, at most `budget` per sample;
    and the number of outliers (B,)."""
    b, n = scores.shape
    q1, q3 = torch.quantile(scores.float(), torch.tensor([0.25, 0.75], device=scores.device), dim=1)  # (B,)
    outlier = scores > (q3 + 1.5 * (q3 - q1)).unsqueeze(1)  # (B, N)
    n_out = outlier.sum(dim=1)  # (B,)
    step = n // n_out.clamp(min=1)
    authors_stride = (step // 3).clamp(min=1)  # (B,)
    index = torch.arange(n, device=scores.device)
    strides = index + 1  # (N,) every candidate stride 1..N
    multiples = (index.view(1, -1) % strides.view(-1, 1)) == 0  # (N strides, N tokens)
    count = (outlier.unsqueeze(1) | multiples.unsqueeze(0)).sum(dim=2)  # (B, N strides): |outliers + multiples|
    fits = (strides.view(1, -1) >= authors_stride.view(-1, 1)) & (count <= budget)
    # the authors' stride when its set fits, else the smallest wider one that fits (stride N when none: n_out >= K)
    stride = torch.where(fits.any(dim=1), strides[fits.long().argmax(dim=1)], n)
    uniform = (index.view(1, -1) % stride.view(-1, 1)) == 0
    chosen = outlier | uniform
    # too many outliers: the top-`budget` of them, no uniform tokens
    rank = torch.empty_like(index).expand(b, -1).clone()
    rank.scatter_(1, torch.sort(scores, dim=1, descending=True, stable=True).indices, index.expand(b, -1))
    over = (n_out >= budget).unsqueeze(1)
    return torch.where(over, rank < budget, chosen), n_out


@PRUNERS.register("prumerge_plus")
class PruMergePlusPruner(PrePrunerBase):
    """Adaptive K from CLS-attention outliers + uniform tokens, capped at the budget, each merged with 32 peers."""

    adaptive = True

    def __init__(self, neighbours: int = 32) -> None:
        if neighbours < 0:
            raise ValueError(f"neighbours must be >= 0, got {neighbours}")
        self.neighbours = neighbours

    def select(self, ctx: PruneContext) -> PruneResult:
        if ctx.vision is None:
            raise ValueError("PruMerge+ needs vision attention access (ctx.vision)")
        b, n, d = ctx.image_tokens.shape
        attn = ctx.vision.cls_attention(layer=-1, reduce="mean").float()  # (B, N)
        chosen, n_out = adaptive_keep(attn, ctx.budget)
        result = PruneResult.from_mask(chosen)
        keep, mask = result.keep, result.keep_mask  # (B, K_max)

        keys = ctx.vision.keys(-1)  # (B, H, S, dh)
        keys = keys.transpose(1, 2).flatten(2)  # (B, S, H*dh)
        if ctx.vision.has_cls:
            keys = keys[:, 1:]  # (B, N, Dk)
        keys = F.normalize(keys.float(), dim=-1)
        dk = keys.shape[-1]
        kept_keys = keys.gather(1, keep.unsqueeze(-1).expand(-1, -1, dk))  # (B, K_max, Dk)
        sim = kept_keys @ keys.transpose(1, 2)  # (B, K_max, N)
        sim = sim.scatter(2, keep.unsqueeze(-1), float("-inf"))  # never one's own neighbour
        m = min(self.neighbours, n - 1)
        nbr = torch.sort(sim, dim=2, descending=True, stable=True).indices[..., :m]  # (B, K_max, m)

        weights = attn / attn.sum(dim=1, keepdim=True)  # (B, N) renormalised over patches
        tokens = ctx.image_tokens.float()
        w = weights.unsqueeze(1).expand(-1, keep.shape[1], -1).gather(2, nbr)  # (B, K_max, m)
        peers = tokens.unsqueeze(1).expand(-1, keep.shape[1], -1, -1)  # (B, K_max, N, D) view, no copy
        peers = peers.gather(2, nbr.unsqueeze(-1).expand(-1, -1, -1, d))  # (B, K_max, m, D)
        own = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, d))  # (B, K_max, D)
        merged = own + (w.unsqueeze(-1) * peers).sum(dim=2)
        merged = merged.masked_fill(~mask.unsqueeze(-1), 0.0).to(ctx.image_tokens.dtype)

        k_max = keep.shape[1]
        flops = access_flops(ctx.vision, -1, cls=True, keys=True) + 2.0 * b * k_max * n * dk + 2.0 * b * k_max * m * d
        return PruneResult(keep, mask, merged, flops, {"scores": attn, "num_outliers": n_out})
