"""`LayerView`: the sequence entering one decoder layer, with explicit q/k access, for in-LLM pruning methods.

A method's `LayerDrop.choose(view)` reads it (FastV, SparseVLM, PyramidDrop, DART); `InLLMPruning`
(`steprune.backbones.in_llm`) builds it before each drop layer. Attention rows are computed from the layer's
own q/k projections and rotary embeddings, so the LLM keeps SDPA. It depends on nothing in `steprune.pruners`,
so the pruner contract can name it without an import cycle.

    rows = view.last_token_attention(layer=view.layer - 1)   # (B, H, S)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, S, dh); cos/sin (B, S, dh) as the decoder's rotary module returns them."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


@dataclass
class LayerView:
    """The sequence entering decoder layer `layer`, and explicit q/k access to the layers before it."""

    layer: int
    hidden_states: Tensor  # (B, S, D) entering `layer`
    image_positions: Tensor  # (B, n) long: sequence positions of the visual tokens still alive
    valid: Tensor  # (B, S) bool: real (non-padding) tokens
    layer_inputs: dict[int, Tensor]  # layer index -> its input hidden states (same S)
    position_embeddings: tuple[Tensor, Tensor]  # cos, sin (B, S, dh)
    decoder: nn.Module
    flops: list[float] = field(default_factory=lambda: [0.0])

    @property
    def text_positions(self) -> Tensor:
        """(B, S) bool: real tokens that are not visual tokens."""
        is_image = torch.zeros_like(self.valid)
        is_image.scatter_(1, self.image_positions, True)
        return self.valid & ~is_image

    def _normed_input(self, layer: int) -> Tensor:
        block = self.decoder.layers[layer]
        return block.input_layernorm(self.layer_inputs[layer])  # (B, S, D)

    def _project(self, layer: int, x: Tensor, which: str, rows: Tensor | None = None) -> Tensor:
        """RoPE'd q or k (B, H, R, dh) of `layer` for the rows (B, R) of x (all rows when None)."""
        attn = self.decoder.layers[layer].self_attn
        cos, sin = self.position_embeddings
        if rows is not None:
            x = x.gather(1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            cos = cos.gather(1, rows.unsqueeze(-1).expand(-1, -1, cos.shape[-1]))
            sin = sin.gather(1, rows.unsqueeze(-1).expand(-1, -1, sin.shape[-1]))
        proj = attn.q_proj if which == "q" else attn.k_proj
        b, r, d = x.shape
        out = proj(x).view(b, r, -1, attn.head_dim).transpose(1, 2)
        self.flops[0] += 2.0 * b * r * d * out.shape[1] * attn.head_dim
        return apply_rope(out, cos, sin)

    def attention_rows(self, layer: int, query_positions: Tensor) -> Tensor:
        """Softmax attention (B, H, Q, S) of the queries at `query_positions` (B, Q), causal + padding masked.

        Only the Q query rows are projected; keys are projected for the whole sequence.
        """
        x = self._normed_input(layer)
        q_rows = self._project(layer, x, "q", query_positions)  # (B, H, Q, dh)
        k = self._project(layer, x, "k")
        k = k.repeat_interleave(q_rows.shape[1] // k.shape[1], dim=1)  # (B, H, S, dh)
        b, h, _, dh = q_rows.shape
        s = k.shape[2]
        scale = getattr(self.decoder.layers[layer].self_attn, "scaling", 1.0 / math.sqrt(dh))
        scores = (q_rows.float() @ k.float().transpose(-1, -2)) * scale  # (B, H, Q, S)
        keys = torch.arange(s, device=k.device)
        allowed = (keys.view(1, 1, -1) <= query_positions.unsqueeze(-1)) & self.valid.unsqueeze(1)  # (B, Q, S)
        scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        self.flops[0] += 2.0 * b * h * query_positions.shape[1] * s * dh
        return scores.softmax(dim=-1)

    def last_token_attention(self, layer: int) -> Tensor:
        """(B, H, S): attention of the last prompt token (left padding puts it at S - 1)."""
        b, s = self.valid.shape
        last = torch.full((b, 1), s - 1, dtype=torch.long, device=self.valid.device)
        return self.attention_rows(layer, last)[:, :, 0]

    def keys(self, layer: int) -> Tensor:
        """RoPE'd keys (B, H, S, dh) of `layer` for the whole sequence, GQA heads repeated to the H query heads.

        Only the k projection runs (and is counted); no query is projected.
        """
        attn = self.decoder.layers[layer].self_attn
        k = self._project(layer, self._normed_input(layer), "k")  # (B, KV, S, dh)
        heads = attn.q_proj.out_features // attn.head_dim
        return k.repeat_interleave(heads // k.shape[1], dim=1)
