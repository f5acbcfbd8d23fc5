"""StepPrune's cross-modal input encoder E (methods.md §1.1.1) and the pre-norm ViT block it is made of.

E runs `num_layers` pre-norm ViT blocks over the concatenation `[X_v ; alpha * W_t(T)]` and returns the
image positions only, H (B, N, D): the pointer decoder's memory.

    enc = CrossModalEncoder(d_vision=1024, d_text=4096, num_heads=8)
    h = enc(x_v, text, text_mask, alpha=1.0)      # (B, N, D); alpha is the annealed text gate

Choices where the specification is open (kept here, not in a config object):
* `d_model` defaults to `d_vision`. When it differs, one linear map D_v -> D_model follows the
  concatenation (W_t still maps D_llm -> D_v, as specified).
* No positional embedding is added: X_v already carries the vision tower's position embedding, and the
  prompt is treated as a set of words.
* A final LayerNorm closes the encoder (pre-norm stacks leave the residual stream un-normalised).
* Causal mode (the ablation) keeps the specified order `[X_v ; text]`, so position i sees positions
  <= i only. A consequence worth knowing: in causal mode no image position can read the prompt.
* Padded text positions are masked out as keys; they still run as queries (their outputs are dropped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention` with an explicit boolean mask."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        b, s, d = x.shape  # (B, S, D)
        q, k, v = self.qkv(x).view(b, s, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        # attn_mask: (B or 1, 1, S, S) bool, True = may attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, S, D/H)
        return self.out(y.transpose(1, 2).reshape(b, s, d))


class MLP(nn.Sequential):
    def __init__(self, d_model: int, mlp_ratio: float) -> None:
        hidden = int(d_model * mlp_ratio)
        super().__init__(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))


class ViTBlock(nn.Module):
    """Pre-norm ViT block: x + attn(LN(x)); x + MLP(LN(x)). Optional LayerScale (per-channel residual gains)."""

    def __init__(
        self, d_model: int, num_heads: int, mlp_ratio: float = 4.0, layer_scale_init: float | None = None
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, num_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio)
        if layer_scale_init is None:
            self.gamma1 = self.gamma2 = None
        else:
            self.gamma1 = nn.Parameter(torch.full((d_model,), float(layer_scale_init)))
            self.gamma2 = nn.Parameter(torch.full((d_model,), float(layer_scale_init)))

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        a = self.attn(self.norm1(x), attn_mask)  # (B, S, D)
        x = x + (a if self.gamma1 is None else self.gamma1 * a)
        m = self.mlp(self.norm2(x))
        return x + (m if self.gamma2 is None else self.gamma2 * m)


def encoder_mask(text_mask: Tensor, num_image: int, causal: bool) -> Tensor:
    """(B, 1, S, S) bool attention mask over `[image (N) ; text (L)]`, True = may attend.

    Image keys are always valid; text keys follow `text_mask`; causal mode adds the lower triangle.
    Every query row keeps at least its own image key(s) or key 0, so no row is empty.
    """
    b, length = text_mask.shape
    s = num_image + length
    keys = torch.cat([text_mask.new_ones(b, num_image), text_mask.bool()], dim=1)  # (B, S)
    mask = keys[:, None, None, :].expand(b, 1, s, s)
    if causal:
        tril = torch.ones(s, s, dtype=torch.bool, device=text_mask.device).tril()
        mask = mask & tril
    return mask


class CrossModalEncoder(nn.Module):
    """Encoder E: pre-norm ViT blocks over `[X_v ; alpha * W_t(T)]`; returns the N image positions."""

    def __init__(
        self,
        d_vision: int,
        d_text: int,
        d_model: int | None = None,
        num_layers: int = 2,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        causal: bool = False,
    ) -> None:
        super().__init__()
        d_model = d_vision if d_model is None else d_model
        self.d_vision, self.d_text, self.d_model = d_vision, d_text, d_model
        self.causal = causal
        self.text_proj = nn.Linear(d_text, d_vision)  # W_t: D_llm -> D_v
        self.in_proj = nn.Identity() if d_model == d_vision else nn.Linear(d_vision, d_model)
        self.blocks = nn.ModuleList(ViTBlock(d_model, num_heads, mlp_ratio) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, vision: Tensor, text: Tensor, text_mask: Tensor, alpha: float | Tensor = 1.0) -> Tensor:
        b, n, d_v = vision.shape  # (B, N, D_v)
        if d_v != self.d_vision or text.shape[-1] != self.d_text:
            raise ValueError(
                f"encoder expects vision width {self.d_vision} and text width {self.d_text}, "
                f"got {d_v} and {text.shape[-1]}"
            )
        if text.shape[:2] != text_mask.shape or text.shape[0] != b:
            raise ValueError(f"text {tuple(text.shape)} and text_mask {tuple(text_mask.shape)} must be (B, L[, D])")
        t = alpha * self.text_proj(text.to(vision.dtype))  # (B, L, D_v)
        x = self.in_proj(torch.cat([vision, t], dim=1))  # (B, N + L, D)
        mask = encoder_mask(text_mask, n, self.causal)  # (B, 1, N + L, N + L)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x[:, :n])  # (B, N, D)
