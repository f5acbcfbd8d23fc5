"""The local denoiser cannot move information across tokens (diagonal attention, methods.md §1.1.4)."""

from __future__ import annotations

import pytest
import torch

from steprune.selector.denoiser import LocalDenoiser


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread wake-ups that dominate on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@torch.no_grad()
def test_perturbing_token_j_leaves_every_other_token_unchanged():
    torch.manual_seed(0)
    den = LocalDenoiser(16, num_heads=4, layer_scale_init=1.0)  # full-strength residual branches
    x = torch.randn(2, 7, 16)
    base = den(x)
    for j in range(7):
        y = x.clone()
        y[:, j] += 3.0 * torch.randn(2, 16)
        out = den(y)
        others = [i for i in range(7) if i != j]
        torch.testing.assert_close(out[:, others], base[:, others], rtol=0, atol=1e-6)
        assert float((out[:, j] - base[:, j]).abs().max()) > 1e-2, "the perturbed token itself changes"


@torch.no_grad()
def test_output_is_the_same_token_by_token():
    torch.manual_seed(1)
    den = LocalDenoiser(16, num_heads=4, layer_scale_init=1.0)
    x = torch.randn(1, 5, 16)
    alone = torch.cat([den(x[:, i : i + 1]) for i in range(5)], dim=1)
    torch.testing.assert_close(den(x), alone, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_starts_close_to_the_identity():
    torch.manual_seed(2)
    x = torch.randn(1, 5, 16)
    assert float((LocalDenoiser(16, num_heads=4)(x) - x).abs().max()) < 0.05
