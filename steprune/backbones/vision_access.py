"""Explicit, lazy access to vision-tower attentions and keys, for methods that score by CLS attention.

Attention rows are computed from the tower's own q/k projections on the hidden states the tower already
returned, so the tower keeps SDPA and nothing is switched to eager attention globally.

    access = ClipVisionAccess(hidden_states, encoder_layers)
    cls = access.cls_attention(layer=-2)        # (B, N) CLS -> patch attention, summed over heads
"""

from __future__ import annotations

import math
from typing import Protocol

from torch import Tensor, nn


class VisionAccess(Protocol):
    has_cls: bool

    def attention(self, layer: int) -> Tensor: ...  # (B, H, S, S), softmax over keys

    def keys(self, layer: int) -> Tensor: ...  # (B, H, S, dh)

    def cls_attention(self, layer: int = -2, reduce: str = "sum") -> Tensor: ...  # (B, N)


class ClipVisionAccess:
    """CLIP-style towers (LLaVA): token 0 is CLS, `hidden_states[j]` is the input of encoder layer j."""

    has_cls = True

    def __init__(self, hidden_states: tuple[Tensor, ...], layers: nn.ModuleList) -> None:
        self.hidden_states = hidden_states  # each (B, 1 + N, D_v)
        self.layers = layers
        self._qk_cache: dict[int, tuple[Tensor, Tensor]] = {}  # per-instance: one batch's projections

    def _qk(self, layer: int) -> tuple[Tensor, Tensor]:
        index = layer % len(self.layers)
        if index not in self._qk_cache:
            self._qk_cache[index] = self._project(index)
        return self._qk_cache[index]

    def _project(self, index: int) -> tuple[Tensor, Tensor]:
        block = self.layers[index]
        attn = block.self_attn
        x = block.layer_norm1(self.hidden_states[index])  # (B, S, D)
        b, s, _ = x.shape
        heads = attn.num_heads
        q = attn.q_proj(x).view(b, s, heads, -1).transpose(1, 2)  # (B, H, S, dh)
        k = attn.k_proj(x).view(b, s, heads, -1).transpose(1, 2)
        return q, k

    def keys(self, layer: int) -> Tensor:
        return self._qk(layer)[1]

    def attention(self, layer: int) -> Tensor:
        q, k = self._qk(layer)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return scores.float().softmax(dim=-1)  # (B, H, S, S)

    def cls_attention(self, layer: int = -2, reduce: str = "sum") -> Tensor:
        q, k = self._qk(layer)
        row = (q[:, :, :1] @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, 1, S)
        probs = row.float().softmax(dim=-1)[:, :, 0, 1:]  # (B, H, N)
        return probs.sum(dim=1) if reduce == "sum" else probs.mean(dim=1)


class TokenSimilarityAccess:
    """Towers without a CLS token (Qwen2.5-VL after the merger): a documented substitute.

    `cls_attention` returns the mean attention each token *receives* under softmax(x x^T / sqrt(d)) over
    the merged tokens — the substitute the HoloV authors use on Qwen. `keys` is the tokens themselves
    as one head. There is no per-layer attention to return.
    """

    has_cls = False

    def __init__(self, tokens: Tensor) -> None:
        self.tokens = tokens  # (B, N, D)

    def keys(self, layer: int) -> Tensor:
        return self.tokens.unsqueeze(1)  # (B, 1, N, D)

    def attention(self, layer: int) -> Tensor:
        x = self.tokens.float()
        return (x @ x.transpose(-1, -2) / math.sqrt(x.shape[-1])).softmax(dim=-1).unsqueeze(1)  # (B, 1, N, N)

    def cls_attention(self, layer: int = -2, reduce: str = "sum") -> Tensor:
        return self.attention(layer)[:, 0].mean(dim=1)  # (B, N): mean attention received


def attention_probs_flops(batch: int, heads: int, seq: int, head_dim: int, rows: int | None = None) -> float:
    """FLOPs of computing `rows` attention rows (all when None) explicitly: q k^T only."""
    return 2.0 * batch * heads * (rows if rows is not None else seq) * seq * head_dim


__all__ = ["VisionAccess", "ClipVisionAccess", "TokenSimilarityAccess", "attention_probs_flops"]
