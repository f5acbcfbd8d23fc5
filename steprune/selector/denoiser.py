"""StepPrune's local denoiser (methods.md §1.1.4): one ViT block whose attention mask is the identity.

    den = LocalDenoiser(d_model=1024, num_heads=16)
    y = den(x_tilde)            # (B, N, D) -> (B, N, D); token i's output depends on token i only

Each token attends only to itself, so the block can correct the gate's noise token by token but cannot
move content between tokens (a noised token cannot borrow its neighbours' content).

Choice where the specification is open: the residual branches carry LayerScale gains initialised at
`layer_scale_init` (1e-3), so the freshly built denoiser is close to the identity and the frozen
projector first sees (almost) the gated features; the gains train like every other parameter.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from steprune.selector.encoder import ViTBlock


class LocalDenoiser(nn.Module):
    """One pre-norm ViT block with a diagonal self-attention mask."""

    def __init__(
        self, d_model: int, num_heads: int = 8, mlp_ratio: float = 4.0, layer_scale_init: float = 1e-3
    ) -> None:
        super().__init__()
        self.block = ViTBlock(d_model, num_heads, mlp_ratio, layer_scale_init=layer_scale_init)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[1]  # (B, N, D)
        identity = torch.eye(n, dtype=torch.bool, device=x.device)[None, None]  # (1, 1, N, N)
        return self.block(x, identity)
