"""Explicit, lazy access to vision-tower attentions and keys, for methods that score by CLS attention.

Attention rows are computed from the tower's own q/k projections on the hidden states the tower already
returned (CLIP) or handed its last block (Qwen2.5-VL), so the tower keeps SDPA and nothing is switched to eager
attention globally.

    access = ClipVisionAccess(hidden_states, encoder_layers)
    cls = access.cls_attention(layer=-2)        # (B, N) CLS -> patch attention, summed over heads
    QwenVisionAccess(...).cls_attention()       # (B, N) attention each merged token receives (no CLS)
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from steprune.backbones.layer_view import rotate_half


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


def window_order(grid_thw: Tensor, merge_size: int, window_size: int, patch_size: int) -> Tensor:
    """(total merged tokens,) long: the merged tokens in the order Qwen2.5-VL's tower holds them.

    The tower visits each image's merged-token grid window by window (windows of
    `window_size // merge_size // patch_size` merged tokens a side, row-major; row-major inside a window),
    images one after the other; entry p is the spatial (row-major, all images) index of the p-th merged token.
    """
    side = max(window_size // merge_size // patch_size, 1)
    orders, offset = [], 0
    for t, h, w in grid_thw.tolist():
        gh, gw = h // merge_size, w // merge_size
        frame, row, col = torch.meshgrid(torch.arange(t), torch.arange(gh), torch.arange(gw), indexing="ij")
        windows_w = -(-gw // side)
        window = (frame * -(-gh // side) + row // side) * windows_w + col // side
        key = (window * side + row % side) * side + col % side  # (t, gh, gw): window, then row-major inside
        orders.append(key.flatten().argsort() + offset)
        offset += t * gh * gw
    return torch.cat(orders).to(grid_thw.device)


class QwenVisionAccess:
    """Qwen2.5-VL (no CLS token): the HoloV authors' score, the attention each merged token *receives*.

    The HoloV authors' Qwen code (`qwen-model-HoloV/modeling_qwen2_5_vl.py`) takes the softmax attention of the
    tower's **last block**, averages it over heads and over query patches (for one image: the mean attention
    each patch receives), and averages each 2x2 merge group's patches into the merged token's score. We compute
    that block's attention explicitly from its own norm1 + qkv (q and k only) + vision RoPE, on the hidden states
    and position embeddings the block was called with (`capture_last_block`), masked to the block's own
    segments (`cu_seqlens`: the image for a full-attention block, its windows otherwise), so the tower keeps
    SDPA. `cls_attention(layer, reduce)` returns it for every CLS-less method whatever `layer` it names (there is
    no CLS row to read at any layer); `reduce="sum"` sums over heads instead of averaging (H times larger, same
    ranking). Scores follow the merged tokens' spatial order; the authors' code leaves them in the tower's window
    order while the features are put back in spatial order (so their score of token i is that of the i-th token
    in window order) — we undo the window order for the scores too.
    `keys` are the merged tokens themselves as one head (a documented substitute: the tower's keys are per
    patch, not per merged token).
    """

    has_cls = False

    def __init__(
        self,
        tokens: Tensor,
        block: nn.Module,
        block_input: Tensor,
        cu_seqlens: Tensor,
        position_embeddings: tuple[Tensor, Tensor],
        order: Tensor,
        query_chunk: int = 1024,
    ) -> None:
        self.tokens = tokens  # (B, N, D) merged tokens, spatial order
        self.block = block  # the tower's last block
        self.block_input = block_input  # (S, D_v) patches of all images, the tower's window order
        self.cu_seqlens = cu_seqlens  # (segments + 1,) the block's attention segments over S
        self.position_embeddings = position_embeddings  # cos, sin (S, dh)
        self.order = order  # (B * N,) `window_order`: spatial index of each merged token in window order
        self.query_chunk = query_chunk
        self._received: Tensor | None = None  # (H, S) per-instance cache: mean attention each patch receives

    def keys(self, layer: int) -> Tensor:
        return self.tokens.unsqueeze(1)  # (B, 1, N, D)

    def attention(self, layer: int) -> Tensor:
        raise NotImplementedError("Qwen2.5-VL access gives the received-attention score only (cls_attention)")

    def _patch_scores(self) -> Tensor:
        """(H, S): attention each patch receives, summed over the queries of its segment / patches per image."""
        if self._received is not None:
            return self._received
        attn = self.block.attn
        s, d = self.block_input.shape
        heads = attn.num_heads
        x = self.block.norm1(self.block_input)  # (S, D_v)
        qk = F.linear(x, attn.qkv.weight[: 2 * d], attn.qkv.bias[: 2 * d]).view(s, 2, heads, -1).float()
        cos, sin = (t.float().unsqueeze(1) for t in self.position_embeddings)  # (S, 1, dh)
        q, k = (qk[:, i] * cos + rotate_half(qk[:, i]) * sin for i in range(2))  # (S, H, dh) each
        scale = getattr(attn, "scaling", q.shape[-1] ** -0.5)
        received = torch.zeros(heads, s, device=x.device)
        bounds = self.cu_seqlens.tolist()
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):  # the block's segments (images or windows)
            keys = k[a:b].transpose(0, 1)  # (H, len, dh)
            for r in range(a, b, self.query_chunk):
                rows = q[r : min(r + self.query_chunk, b)].transpose(0, 1)  # (H, r, dh)
                probs = (rows @ keys.transpose(1, 2) * scale).softmax(dim=-1)  # (H, r, len)
                received[:, a:b] += probs.sum(dim=1)
        self._received = received / (s // self.tokens.shape[0])  # mean over the image's query patches
        return self._received

    def cls_attention(self, layer: int = -2, reduce: str = "sum") -> Tensor:
        per_head = self._patch_scores()  # (H, S)
        patch = per_head.sum(dim=0) if reduce == "sum" else per_head.mean(dim=0)  # (S,)
        b, n, _ = self.tokens.shape
        merged = patch.view(b * n, -1).mean(dim=1)  # (B * N,) each merge group's patches, window order
        spatial = torch.empty_like(merged).scatter_(0, self.order, merged)
        return spatial.view(b, n)

    def score_flops(self) -> float:
        """FLOPs (matmuls) of the score: q and k of every patch, q k^T within each segment."""
        s, d = self.block_input.shape
        lengths = self.cu_seqlens[1:] - self.cu_seqlens[:-1]
        return 4.0 * s * d * d + 2.0 * float((lengths.double() ** 2).sum()) * d


def attention_probs_flops(batch: int, heads: int, seq: int, head_dim: int, rows: int | None = None) -> float:
    """FLOPs of computing `rows` attention rows (all when None) explicitly: q k^T only."""
    return 2.0 * batch * heads * (rows if rows is not None else seq) * seq * head_dim


__all__ = ["VisionAccess", "ClipVisionAccess", "QwenVisionAccess", "attention_probs_flops", "window_order"]
