"""The floor methods: uniform stride, pooling layouts (2-D and the 1-D fallback)."""

from __future__ import annotations

import pytest
import torch

from steprune.pruners import PRUNERS, PruneContext
from steprune.pruners.floor import pooled_grid


def context(n_rows: int, n_cols: int, budget: int, batch: int = 2, dim: int = 4) -> PruneContext:
    n = n_rows * n_cols
    tokens = torch.arange(batch * n * dim, dtype=torch.float32).view(batch, n, dim)
    return PruneContext(
        tokens, tokens, torch.zeros(batch, 1, dim), torch.ones(batch, 1, dtype=torch.bool), budget, (n_rows, n_cols)
    )


def test_pooled_grid_prefers_the_grid_aspect():
    assert pooled_grid(24, 24, 64) == (8, 8)
    assert pooled_grid(12, 12, 48) in {(6, 8), (8, 6)}
    assert pooled_grid(4, 4, 5) is None


def test_pool_2d_averages_each_cell():
    ctx = context(4, 4, 4, batch=1, dim=1)
    result = PRUNERS.create("pool").select(ctx)
    grid = ctx.image_tokens[0, :, 0].view(4, 4)
    expected = torch.stack([grid[:2, :2].mean(), grid[:2, 2:].mean(), grid[2:, :2].mean(), grid[2:, 2:].mean()])
    torch.testing.assert_close(result.merged[0, :, 0], expected)
    assert result.keep[0].tolist() == [0, 2, 8, 10]


@pytest.mark.parametrize("budget", [5, 7, 13])
def test_pool_falls_back_to_1d_for_prime_budgets(budget):
    result = PRUNERS.create("pool").select(context(4, 4, budget))
    assert result.lengths.tolist() == [budget, budget]
    assert result.keep[0].unique().numel() == budget


def test_uniform_stride():
    result = PRUNERS.create("uniform").select(context(4, 4, 4))
    assert result.keep[0].tolist() == [2, 6, 10, 14]
