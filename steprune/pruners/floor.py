"""The honest floor: identity (keep all), seeded random, uniform spatial stride, and 2-D pooling ("resize").

PRUNERS.create("uniform").select(ctx)     # K tokens on a regular stride over the grid
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from steprune.pruners.contract import PrePrunerBase, PruneContext, PruneResult
from steprune.pruners.registry import PRUNERS


@PRUNERS.register("identity")
class IdentityPruner(PrePrunerBase):
    """Keeps every visual token, whatever the budget: the unpruned reference."""

    def select(self, ctx: PruneContext) -> PruneResult:
        return PruneResult.keep_all(ctx.batch_size, ctx.num_tokens, ctx.device)


@PRUNERS.register("random")
class RandomPruner(PrePrunerBase):
    """K tokens uniformly at random per sample; seeded by `seed` (or the context's generator)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def select(self, ctx: PruneContext) -> PruneResult:
        generator = ctx.generator
        if generator is None:
            generator = torch.Generator(device="cpu").manual_seed(self.seed)
        noise = torch.rand(ctx.batch_size, ctx.num_tokens, generator=generator).to(ctx.device)
        return PruneResult.from_indices(noise.argsort(dim=1)[:, : ctx.budget])


@PRUNERS.register("uniform")
class UniformPruner(PrePrunerBase):
    """K tokens at a regular stride over the row-major grid: index floor((i + 0.5) * N / K).

    Costs nothing, so it is also the "ideal zero-cost selector" of the efficiency benchmark.
    """

    def select(self, ctx: PruneContext) -> PruneResult:
        n, k = ctx.num_tokens, ctx.budget
        index = ((torch.arange(k, device=ctx.device, dtype=torch.float64) + 0.5) * n / k).floor().long()
        return PruneResult.from_indices(index.expand(ctx.batch_size, -1).clone())


def pooled_grid(rows: int, cols: int, budget: int) -> tuple[int, int] | None:
    """The (h, w) with h * w == budget, h <= rows, w <= cols, whose aspect is closest to the grid's; None if none."""
    options = [(h, budget // h) for h in range(1, budget + 1) if budget % h == 0 and h <= rows and budget // h <= cols]
    if not options:
        return None
    return min(options, key=lambda hw: abs(math.log(hw[0] / hw[1]) - math.log(rows / cols)))


@PRUNERS.register("pool")
class PoolPruner(PrePrunerBase):
    """2-D adaptive average pooling of the projected tokens to an h x w grid with h * w = K ("resize").

    When K has no h x w layout inside the grid (a prime K on a square grid), the row-major sequence is
    pooled to K instead (1-D adaptive pooling) — documented fallback, still exactly K tokens.

    The pooled token of each cell replaces the cell's centre token, whose index (and so position) it
    takes. Pooling happens after the projector (the same code path for every family); resizing the
    image itself would pool before the tower.
    """

    def select(self, ctx: PruneContext) -> PruneResult:
        rows, cols = ctx.grid
        b, n, d = ctx.image_tokens.shape
        layout = pooled_grid(rows, cols, ctx.budget)
        if layout is None:  # e.g. a prime budget on a square grid: pool the row-major sequence instead
            merged = F.adaptive_avg_pool1d(ctx.image_tokens.transpose(1, 2).float(), ctx.budget)
            merged = merged.transpose(1, 2).to(ctx.image_tokens.dtype)  # (B, K, D)
            k = torch.arange(ctx.budget, device=ctx.device)
            index = ((k * n // ctx.budget) + ((k + 1) * n + ctx.budget - 1) // ctx.budget - 1) // 2
            return PruneResult.from_indices(
                index.expand(b, -1).clone(), merged=merged, selection_flops=float(b * n * d)
            )
        h, w = layout
        grid = ctx.image_tokens.transpose(1, 2).reshape(b, d, rows, cols)
        pooled = F.adaptive_avg_pool2d(grid.float(), (h, w)).to(ctx.image_tokens.dtype)  # (B, D, h, w)
        merged = pooled.flatten(2).transpose(1, 2)  # (B, K, D)
        # centre of each adaptive-pooling cell: cells span [floor(i*R/h), ceil((i+1)*R/h))
        r = torch.arange(h, device=ctx.device)
        c = torch.arange(w, device=ctx.device)
        r_mid = (r * rows // h + ((r + 1) * rows + h - 1) // h - 1) // 2
        c_mid = (c * cols // w + ((c + 1) * cols + w - 1) // w - 1) // 2
        index = (r_mid.view(-1, 1) * cols + c_mid.view(1, -1)).flatten().expand(b, -1).clone()
        return PruneResult.from_indices(index, merged=merged, selection_flops=float(b * n * d))
