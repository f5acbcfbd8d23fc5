"""SoftTopK polarisation (methods.md §1.3): rows sum to k, values in [0, 1], the hard top-k in the limit."""

from __future__ import annotations

import pytest
import torch

from steprune.selector.soft_topk import sigmoid_topk, soft_topk


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread wake-ups that dominate on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def distinct_scores(b: int = 3, n: int = 40, seed: int = 0) -> torch.Tensor:
    """Scores with gaps >= 1/(n-1) of the range between neighbours, so the hard top-k is unambiguous."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=gen) for _ in range(b)]).double() * 0.37 + 2.0


def hard_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    top = torch.zeros_like(scores)
    return top.scatter(1, scores.topk(k, dim=1).indices, 1.0)


@pytest.mark.parametrize("op", [soft_topk, sigmoid_topk])
def test_rows_sum_to_k_and_stay_in_unit_interval(op):
    scores = torch.rand(4, 30, generator=torch.Generator().manual_seed(1))
    for k in (7.5, torch.tensor([1.0, 3.25, 15.0, 29.0])):
        g = op(scores, k, beta=10.0)
        torch.testing.assert_close(g.sum(dim=1), torch.as_tensor(k).expand(4).float(), rtol=0, atol=1e-3)
        assert float(g.min()) >= 0.0 and float(g.max()) <= 1.0


@pytest.mark.parametrize("op", [soft_topk, sigmoid_topk])
def test_approaches_the_hard_topk_indicator_as_beta_sharpens(op):
    scores, k = distinct_scores(), 12
    hard = hard_topk(scores, k)
    betas = (1.0, 10.0, 100.0, 1000.0)
    gaps = [float((op(scores, float(k), beta=beta, iters=300) - hard).abs().max()) for beta in betas]
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 0.5, gaps
    # the k-th and (k+1)-th normalised scores are 1/39 apart and the threshold sits between them, so the
    # limit error is 1 - sigmoid(2 beta / 78): 0.072 at beta = 100, 7e-12 at beta = 1000
    assert abs(gaps[2] - (1 - torch.sigmoid(torch.tensor(200.0 / 78)).item())) < 0.01, gaps
    assert gaps[3] < 1e-6, gaps


def test_ot_and_sigmoid_agree_at_convergence_and_sigmoid_gradient_keeps_the_sum():
    scores = distinct_scores(seed=2)
    torch.testing.assert_close(
        soft_topk(scores, 9.0, 5.0, iters=200), sigmoid_topk(scores, 9.0, 5.0), atol=1e-6, rtol=0
    )
    x = scores.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(sigmoid_topk(x, 9.0, 5.0).sum(), x)
    assert float(grad.abs().max()) < 1e-9, "the threshold's implicit gradient keeps sum g == k"
    (grad_ot,) = torch.autograd.grad(soft_topk(x, 9.0, 5.0, iters=200).sum(), x)
    assert float(grad_ot.abs().max()) < 1e-6


def test_degenerate_k_and_beta():
    scores = torch.rand(2, 8)
    g = soft_topk(scores, 0.0)  # clamped to 1e-4: finite, sums to ~0
    assert bool(torch.isfinite(g).all()) and float(g.sum(dim=1).max()) < 1e-3
    with pytest.raises(ValueError, match="beta must be > 0"):
        soft_topk(scores, 2.0, beta=0.0)
    with pytest.raises(ValueError, match=r"k must be a float or a \(B,\) tensor"):
        sigmoid_topk(scores, torch.ones(3))
