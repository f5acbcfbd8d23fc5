"""The variance-preserving noise gate keeps each token's second moment for every g (methods.md §1.3)."""

from __future__ import annotations

import pytest
import torch

from steprune.selector.noise_gate import vp_noise_gate


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread wake-ups that dominate on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_second_moment_is_preserved_for_every_g():
    """Monte-Carlo over 64 tokens x 200 draws of D = 64 channels, per g.

    Per token, ||x~||^2 / ||x||^2 = g + 2 sqrt(g(1-g)) x.e / ||x||^2 + (1-g) ||e||^2 / ||x||^2 has mean 1
    and variance (2(1-g)^2 + 4g(1-g)) / D = 2(1 - g^2) / D <= 2 / D. Averaging M = 64 * 200 independent
    ratios gives a standard error <= sqrt(2 / (D M)) = 1.6e-3; the tolerance 1e-2 is > 6 standard errors.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 64, generator=gen) * torch.linspace(0.1, 5.0, 64)[None, :, None]  # varied RMS
    energy = x.pow(2).sum(-1)  # (1, 64)
    for value in (0.0, 0.1, 0.5, 0.9, 1.0):
        g = torch.full((1, 64), value)
        ratios = torch.stack([vp_noise_gate(x, g, gen).pow(2).sum(-1) / energy for _ in range(200)])
        assert abs(float(ratios.mean()) - 1.0) < 1e-2, (value, float(ratios.mean()))


def test_endpoints_and_determinism():
    x = torch.randn(2, 5, 8)
    g = torch.tensor([[1.0, 0.0, 0.5, 1.0, 0.0]] * 2)
    a = vp_noise_gate(x, g, torch.Generator().manual_seed(3))
    b = vp_noise_gate(x, g, torch.Generator().manual_seed(3))
    assert torch.equal(a, b), "a seeded generator gives the same noise"
    torch.testing.assert_close(a[:, 0], x[:, 0], rtol=0, atol=1e-5)  # g = 1 keeps the token
    y = vp_noise_gate(x * 7.0, g, torch.Generator().manual_seed(3))
    torch.testing.assert_close(y[:, 1], 7.0 * a[:, 1], rtol=1e-5, atol=1e-5)  # g = 0: noise scaled by the RMS only
    with pytest.raises(ValueError, match=r"must be \(B, N\)"):
        vp_noise_gate(x, g[:, :3])


def test_gradient_reaches_g_at_the_endpoints():
    x = torch.randn(1, 3, 4)
    g = torch.tensor([[0.0, 0.4, 1.0]], requires_grad=True)
    vp_noise_gate(x, g, torch.Generator().manual_seed(0)).sum().backward()
    assert bool(torch.isfinite(g.grad).all()) and float(g.grad.abs().min()) > 0
