"""The variance-preserving noise gate (methods.md §1.3): the differentiable stand-in for keeping a token.

    x_tilde = vp_noise_gate(x, g, generator=torch.Generator().manual_seed(0))   # x (B, N, D), g (B, N)

`x~_i = sqrt(g_i) x_i + sqrt(1 - g_i) eps_i` with `eps_i ~ N(0, sigma_i^2 I)` and sigma_i the RMS of token
i over its D channels, so E||x~_i||^2 = g ||x_i||^2 + (1 - g) D sigma_i^2 = ||x_i||^2 for every g: g = 1
keeps the token, g = 0 replaces it with pure noise of the same energy.

Choices where the specification is open:
* sigma_i is computed from x detached: the noise level is a statistic of the input, not a gradient path
  (gradients reach the selector through g).
* g and 1 - g are clamped at 1e-12 under the square roots, so g = 0 or 1 exactly gives finite gradients.
* Noise is drawn in float32 on the generator's device (CPU when no generator is given and x is on CPU),
  then cast to x's dtype and device, so a seed gives the same noise on every device.
"""

from __future__ import annotations

import torch
from torch import Tensor


def vp_noise_gate(x: Tensor, g: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Gate tokens x (B, N, D) by g (B, N) in [0, 1], preserving each token's second moment."""
    if g.shape != x.shape[:2]:
        raise ValueError(f"g {tuple(g.shape)} must be (B, N) for x {tuple(x.shape)}")
    sigma = x.detach().float().pow(2).mean(dim=-1, keepdim=True).sqrt()  # (B, N, 1): token RMS
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device)
    eps = (noise * sigma).to(x.dtype)  # (B, N, D)
    g = g.to(x.dtype)[..., None]  # (B, N, 1)
    return g.clamp_min(1e-12).sqrt() * x + (1 - g).clamp_min(1e-12).sqrt() * eps
