"""VisionZip (CVPR 2025): dominant tokens by CLS attention + contextual tokens merged from the rest.

    PRUNERS.create("visionzip").select(ctx)      # K = round(K*54/64) dominant + the rest contextual

Where it runs: before the LLM, on the vision tower's layer -2 (its CLS attention and keys, computed
explicitly by `ctx.vision`), merging the projected tokens `ctx.image_tokens`.

Score and budget (K = ctx.budget, `dominant_ratio` = 54/64, so 64 -> 54 + 10 as in the paper):
1. D = floor(K * dominant_ratio + 0.5) dominant tokens: the top-D patches by CLS -> patch attention of
   vision layer -2, summed over heads. Ties go to the lower index (stable sort).
2. C = K - D contextual tokens from the R = N - D remaining tokens, taken in index order: targets are
   the remaining tokens at positions 0, s, 2s, ... (s = max(1, R // C), first C of them); every other
   remaining token is assigned to its most similar target (cosine similarity of the layer -2 keys
   averaged over heads; ties to the lower target), and the contextual token is, as in the authors'
   `clip_encoder.py`, the target plus the mean of its assigned tokens: target + sum(assigned) / max(count, 1)
   (a target nothing is assigned to stays itself). 1-D example: target 1, assigned 2, 3, 4, 5 -> 1 + 3.5 = 4.5.
Each kept index carries its feature in `merged`: a dominant token its own projected token, a contextual
token the merged feature, placed at its target's index (so the sorted result keeps a spatial order).

Defaults: layer -2, dominant_ratio 54/64. Text-free: VisionZip never reads the prompt (no change).

Deliberate differences from the authors' code:
- They keep CLS + (D-1) patches, because their LLaVA fork feeds CLS to the LLM; LLaVA-1.5 under HF
  drops CLS ("default" strategy), so we keep D patches.
- They merge in vision space (layer -2 hidden states) before the projector and append the contextual
  tokens after the dominant ones; we merge the projected tokens (the projector is nonlinear, so the
  merged features differ slightly) and place each contextual token at its target's position.
- Qwen2.5-VL has no CLS: `ctx.vision.cls_attention()` is the HoloV authors' Qwen score (the attention each
  merged token receives in the tower's last block, `QwenVisionAccess`) and the keys are the merged tokens.
- Batched over samples; topk ties broken deterministically (lower index).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from steprune.backbones.vision_access import ClipVisionAccess, QwenVisionAccess, VisionAccess
from steprune.pruners.contract import PrePrunerBase, PruneContext, PruneResult
from steprune.pruners.registry import PRUNERS


def require_vision(ctx: PruneContext, method: str) -> VisionAccess:
    if ctx.vision is None:
        raise ValueError(
            f"{method} needs ctx.vision (vision-tower attentions); build the context with a backbone adapter"
        )
    return ctx.vision


def access_flops(access: VisionAccess, layer: int, cls: bool = False, keys: bool = False) -> float:
    """FLOPs (matmuls only) a method spends reading `cls_attention` (`cls`) and/or `keys` of one layer.

    CLIP: the first read of a layer projects q and k on all S tokens (2 * 2 S D^2) and `ClipVisionAccess`
    caches them, so they count once whichever of the two reads a method makes; `cls` adds the CLS score
    row (2 S D). Qwen2.5-VL: the last block's q/k and q k^T within its segments (`score_flops`) for `cls`,
    nothing for `keys` (the merged tokens). Unknown accesses count 0. Counted as a method's own cost (as on a
    fresh access).
    """
    if isinstance(access, ClipVisionAccess):
        b, s, d = access.hidden_states[layer % len(access.layers)].shape
        projections = 4.0 * b * s * d * d if cls or keys else 0.0
        return projections + (2.0 * b * s * d if cls else 0.0)
    if isinstance(access, QwenVisionAccess):
        return access.score_flops() if cls else 0.0
    return 0.0


def split_budget(budget: int, dominant_ratio: float) -> tuple[int, int]:
    """(dominant, contextual) with dominant = floor(budget * ratio + 0.5) (round half up), at least 1."""
    dominant = min(budget, max(1, math.floor(budget * dominant_ratio + 0.5)))
    return dominant, budget - dominant


def descending_order(scores: Tensor) -> Tensor:
    """Indices sorting `scores` (B, N) high to low; equal scores keep index order."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


@PRUNERS.register("visionzip")
class VisionZipPruner(PrePrunerBase):
    """Dominant (CLS attention) + contextual (merged by key similarity) tokens; see the module docstring."""

    reads_text = False

    def __init__(self, dominant_ratio: float = 54 / 64, layer: int = -2) -> None:
        if not 0.0 < dominant_ratio <= 1.0:
            raise ValueError(f"dominant_ratio must be in (0, 1], got {dominant_ratio}")
        self.dominant_ratio = dominant_ratio
        self.layer = layer

    def select(self, ctx: PruneContext) -> PruneResult:
        access = require_vision(ctx, "visionzip")
        tokens = ctx.image_tokens  # (B, N, D_llm)
        b, n, d_llm = tokens.shape
        dominant, contextual = split_budget(ctx.budget, self.dominant_ratio)

        cls = access.cls_attention(layer=self.layer, reduce="sum").float()  # (B, N)
        dom_idx = descending_order(cls)[:, :dominant]  # (B, D)
        dom_feat = tokens.gather(1, dom_idx.unsqueeze(-1).expand(-1, -1, d_llm))  # (B, D, D_llm)
        if contextual == 0:
            flops = access_flops(access, self.layer, cls=True)
            return PruneResult.from_indices(dom_idx, merged=dom_feat, selection_flops=flops)

        # the remaining tokens, in index order
        is_dom = torch.zeros(b, n, dtype=torch.bool, device=tokens.device).scatter_(1, dom_idx, True)
        position = torch.arange(n, device=tokens.device).expand(b, -1)
        rest = torch.where(is_dom, position + n, position).argsort(dim=1)[:, : n - dominant]  # (B, R)
        r = n - dominant
        step = max(1, r // contextual)
        is_target = torch.zeros(r, dtype=torch.bool, device=tokens.device)
        is_target[torch.arange(0, r, step, device=tokens.device)[:contextual]] = True
        target_idx, other_idx = rest[:, is_target], rest[:, ~is_target]  # (B, C), (B, R - C)

        keys = access.keys(self.layer)  # (B, H, S, dh); CLIP: S = 1 + N with CLS first, q/k cached above
        metric = keys.float().mean(dim=1)  # (B, S, dh)
        if access.has_cls:
            metric = metric[:, 1:]
        metric = F.normalize(metric, dim=-1)  # (B, N, dh)
        dh = metric.shape[-1]
        other_key = metric.gather(1, other_idx.unsqueeze(-1).expand(-1, -1, dh))  # (B, R - C, dh)
        target_key = metric.gather(1, target_idx.unsqueeze(-1).expand(-1, -1, dh))  # (B, C, dh)
        similarity = other_key @ target_key.transpose(1, 2)  # (B, R - C, C)
        assign = similarity.argmax(dim=-1)  # (B, R - C): first maximum = lower target

        feats = tokens.float()
        target_feat = feats.gather(1, target_idx.unsqueeze(-1).expand(-1, -1, d_llm))  # (B, C, D_llm)
        other_feat = feats.gather(1, other_idx.unsqueeze(-1).expand(-1, -1, d_llm))  # (B, R - C, D_llm)
        sums = torch.zeros_like(target_feat).scatter_add(1, assign.unsqueeze(-1).expand(-1, -1, d_llm), other_feat)
        counts = torch.zeros(b, contextual, device=tokens.device).scatter_add(
            1, assign, torch.ones_like(assign, dtype=torch.float)
        )
        merged_ctx = (target_feat + sums / counts.clamp(min=1).unsqueeze(-1)).to(tokens.dtype)  # (B, C, D_llm)
        flops = access_flops(access, self.layer, cls=True, keys=True)
        flops += 2.0 * b * (r - contextual) * contextual * dh  # similarities
        flops += b * (r - contextual) * d_llm + 2.0 * b * contextual * d_llm  # sums, means, + target

        indices = torch.cat([dom_idx, target_idx], dim=1)  # (B, K)
        merged = torch.cat([dom_feat, merged_ctx], dim=1)  # (B, K, D_llm)
        return PruneResult.from_indices(indices, merged=merged, selection_flops=flops)
