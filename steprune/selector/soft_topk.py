"""Score polarisation g = SoftTopK(s; k, beta) (methods.md §1.3): a smooth top-k indicator in [0, 1].

    g = soft_topk(scores, k=12.5, beta=20.0)       # (B, N), each row sums to k; entropic OT (default)
    g = sigmoid_topk(scores, k=12.5, beta=20.0)    # the cheaper alternative, same limit

`soft_topk` is the entropic optimal-transport top-k of Xie et al. 2020: the N scores (mass 1/N each) are
transported to the two anchors {0, 1} with target marginals [(N-k)/N, k/N] under the squared-distance cost
C_ij = (x_i - y_j)^2 and entropic regularisation eps = 1/beta; g_i is the share of token i's mass sent to
anchor 1. Log-domain Sinkhorn with epsilon scaling, unrolled for `iters` iterations (gradients flow through
the iterations).

Because there are only two anchors, the OT solution is a sigmoid: g_i = sigmoid(2 * beta * (x_i - t)) with
a threshold t set by the dual potentials so that sum g = k. `sigmoid_topk` computes exactly that, with t
found by bisection (started around the k-th score) instead of Sinkhorn, and the implicit gradient of t,
so both operators agree at convergence and differ only in cost and in how the threshold's gradient is
obtained.

Choices where the specification is open:
* Scores are min-max normalised per row to x in [0, 1] before the cost, so beta does not depend on the
  raw score scale (which gamma and T_max govern). A constant row maps to x = 0 everywhere.
* k is clamped to [1e-4, N - 1e-4] (a zero marginal has no logarithm); rows then sum to the clamped k.
* The Sinkhorn iterations end with a row update and g_i = Gamma_i1 / (Gamma_i0 + Gamma_i1), so g lies in
  [0, 1] exactly; the row sum equals k up to Sinkhorn's convergence: measured on N = 576 uniform scores,
  |sum - k| < 1e-4 at beta = 10 (50 iterations), < 1e-3 at beta = 50 and < 1e-2 at beta = 200 (300
  iterations). Raise `iters` for large beta.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

K_MARGIN = 1e-4


def _normalise(scores: Tensor) -> Tensor:
    """Per-row min-max to [0, 1]: (B, N)."""
    low = scores.min(dim=1, keepdim=True).values
    high = scores.max(dim=1, keepdim=True).values
    return (scores - low) / (high - low).clamp_min(1e-12)


def _k_column(k: float | Tensor, scores: Tensor) -> Tensor:
    """k as a (B, 1) float tensor, clamped into the open interval (0, N)."""
    b, n = scores.shape
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, N), got {tuple(scores.shape)}")
    k_t = torch.as_tensor(k, dtype=scores.dtype, device=scores.device)
    if k_t.dim() == 0:
        k_t = k_t.expand(b)
    if k_t.shape != (b,):
        raise ValueError(f"k must be a float or a (B,) tensor with B={b}, got shape {tuple(k_t.shape)}")
    return k_t.clamp(K_MARGIN, n - K_MARGIN)[:, None]


def soft_topk(scores: Tensor, k: float | Tensor, beta: float = 10.0, iters: int = 100) -> Tensor:
    """Entropic-OT soft top-k of Xie et al. 2020 (log-domain Sinkhorn): (B, N) -> g (B, N) in [0, 1]."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    n = scores.shape[-1]
    k_col = _k_column(k, scores)  # (B, 1)
    x = _normalise(scores)  # (B, N)
    anchors = torch.tensor([0.0, 1.0], dtype=scores.dtype, device=scores.device)
    cost = (x[:, :, None] - anchors) ** 2  # (B, N, 2)
    eps = 1.0 / beta
    log_mu = -math.log(n)  # each score carries mass 1/N
    log_nu = torch.cat([(n - k_col) / n, k_col / n], dim=1).log()  # (B, 2)
    f = torch.zeros_like(x)  # (B, N) row potentials
    g = torch.zeros_like(log_nu)  # (B, 2) column potentials
    # epsilon scaling: eps decays geometrically from 1 (the cost scale) to 1/beta over the first half of the
    # iterations, then stays there; plain Sinkhorn needs thousands of iterations at large beta
    decay = min(1.0, eps) ** (1.0 / max(iters // 2, 1))
    for i in range(iters):
        eps_i = max(eps, decay ** (i + 1))
        g = eps_i * log_nu - eps_i * torch.logsumexp((f[:, :, None] - cost) / eps_i, dim=1)
        f = eps_i * log_mu - eps_i * torch.logsumexp((g[:, None, :] - cost) / eps_i, dim=2)
    log_plan = (f[:, :, None] + g[:, None, :] - cost) / eps  # (B, N, 2)
    return torch.softmax(log_plan, dim=2)[..., 1]  # share of each token's mass sent to anchor 1


def sigmoid_topk(scores: Tensor, k: float | Tensor, beta: float = 10.0, iters: int = 40) -> Tensor:
    """g_i = sigmoid(2 beta (x_i - t)) with sum g = k; t by bisection, gradient of t by implicit differentiation."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    k_col = _k_column(k, scores)  # (B, 1)
    x = _normalise(scores)  # (B, N)
    with torch.no_grad():
        # bracket around the k-th largest score; widen by enough that the sum hits 0 and N at the ends
        kth = x.sort(dim=1, descending=True).values.gather(1, k_col.ceil().long().clamp(1, x.shape[1]) - 1)
        span = 1.0 + 20.0 / beta
        low, high = kth - span, kth + span  # (B, 1)
        for _ in range(iters):
            mid = (low + high) / 2
            too_many = torch.sigmoid(2 * beta * (x - mid)).sum(dim=1, keepdim=True) > k_col
            low, high = torch.where(too_many, mid, low), torch.where(too_many, high, mid)
        t0 = (low + high) / 2
        slope = torch.sigmoid(2 * beta * (x - t0))
        slope = slope * (1 - slope)  # (B, N), d g_i / d x_i up to the constant 2 beta
        weight = slope / slope.sum(dim=1, keepdim=True).clamp_min(1e-30)  # dt/dx_i = weight_i
    # forward value t0; gradient dt/dx = weight (keeps sum g == k to first order)
    t = t0 + (weight * (x - x.detach())).sum(dim=1, keepdim=True)
    return torch.sigmoid(2 * beta * (x - t))
