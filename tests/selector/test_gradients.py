"""Gradients reach every trainable parameter through the noise gate and through A_t (the length term).

Checked numerically on a micro selector: every parameter gets a nonzero gradient, and d E[K] / d s (the
STOP vector) matches central finite differences in float64.
"""

from __future__ import annotations

import pytest
import torch

from steprune.selector.selector import StepPruneSelector

N, L = 6, 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread wake-ups that dominate on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def micro(polarisation: str = "ot", seed: int = 5) -> StepPruneSelector:
    torch.manual_seed(seed)
    sel = StepPruneSelector(
        d_vision=8,
        d_text=12,
        d_model=16,
        encoder_heads=2,
        decoder_heads=2,
        denoiser_heads=2,
        mlp_ratio=2.0,
        denoiser_layer_scale=0.1,
        polarisation=polarisation,
        polarisation_iters=30,
        min_k=0,  # the paper's loop: STOP may come first (these fixtures need it)
    )
    return sel.double()


def batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    vision = torch.randn(2, N, 8, generator=gen, dtype=torch.float64)
    text = torch.randn(2, L, 12, generator=gen, dtype=torch.float64)
    return vision, text, torch.tensor([[True, True, True], [False, True, True]])


def surrogate(sel: StepPruneSelector, t_max: int = 4) -> dict[str, torch.Tensor]:
    vision, text, mask = batch()
    out = sel.forward_train(
        vision, text, mask, alpha=0.7, tau=0.5, gamma=0.9, beta=5.0, k_bar=2.5,
        generator=torch.Generator().manual_seed(0), t_max=t_max,
    )  # fmt: skip
    steps = out["step_valid"].sum(dim=1).tolist()
    assert min(steps) >= t_max - 1, f"the fixture needs trajectories of several steps, got {steps}"
    return out


def grads(sel: StepPruneSelector, loss: torch.Tensor) -> dict[str, float]:
    sel.zero_grad(set_to_none=True)
    loss.backward()
    return {n: 0.0 if p.grad is None else float(p.grad.abs().max()) for n, p in sel.named_parameters()}


@pytest.mark.parametrize("polarisation", ["ot", "sigmoid"])
def test_the_gated_features_reach_every_parameter(polarisation):
    sel = micro(polarisation)
    out = surrogate(sel)
    target = torch.randn(out["features"].shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    zero = [n for n, g in grads(sel, (out["features"] - target).pow(2).mean()).items() if g == 0.0]
    assert zero == [], f"no gradient through the noise gate for {zero}"


def test_the_length_term_reaches_every_encoder_and_decoder_parameter():
    sel = micro()
    out = surrogate(sel)
    g = grads(sel, out["expected_length"].mean() / N)
    zero = [n for n, v in g.items() if v == 0.0 and not n.startswith("denoiser.")]
    assert zero == [], f"no gradient through A_t for {zero}"
    assert all(v == 0.0 for n, v in g.items() if n.startswith("denoiser.")), "E[K] does not read the denoiser"


def test_expected_length_gradient_wrt_stop_matches_finite_differences():
    """T_max = 2, so E[K] = A_1 + A_2 = 2 - pi_1[STOP] and the first query is q_0: no straight-through
    feedback is involved, and autograd must equal the derivative of the forward value exactly. (From step 2
    on, the straight-through term pi - stopgrad(pi) is zero in value but not in gradient, by design, so
    finite differences of the forward value cannot check it.)"""
    sel = micro(seed=3)
    vision, text, mask = batch(seed=4)

    def length(stop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            sel.decoder.stop.copy_(stop)
        out = sel.forward_train(vision, text, mask, alpha=1.0, tau=0.3, k_bar=2.0, t_max=2)
        return out["expected_length"].sum(), out["chosen"]

    stop0 = sel.decoder.stop.detach().clone()
    value, actions = length(stop0)
    assert 2.0 < value.item() < 4.0, "both samples must take a first step other than STOP"
    sel.zero_grad(set_to_none=True)
    value.backward()
    analytic = sel.decoder.stop.grad.clone()
    assert float(analytic.abs().max()) > 1e-3
    h = 1e-6
    numeric = torch.zeros_like(stop0)
    for i in range(stop0.numel()):
        step = torch.zeros_like(stop0)
        step[i] = h
        (plus, a_plus), (minus, a_minus) = length(stop0 + step), length(stop0 - step)
        assert torch.equal(a_plus, actions) and torch.equal(a_minus, actions), "the hard choices must not flip"
        numeric[i] = (plus.detach() - minus.detach()) / (2 * h)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_with_the_t_max_horizon_the_stop_choice_itself_gets_a_gradient():
    """Horizon "t_max": E[K] sums A_t past a sample's STOP, so the STOP probability of the step where it
    stopped moves E[K]; with horizon "stop" it moves nothing (no gradient could ever say "go on")."""
    vision, text, mask = batch(seed=4)
    for horizon, expect_gradient in (("t_max", True), ("stop", False)):
        sel = micro(seed=3)
        sel.horizon = horizon
        with torch.no_grad():  # W_q(h) = q* + small, W_k = I, s = 50 q*: STOP wins at once (K = 0, one hard step)
            q_star = torch.ones(16, dtype=torch.float64)
            sel.decoder.pointer_q.weight.mul_(0.01)
            sel.decoder.pointer_q.bias = torch.nn.Parameter(q_star.clone())
            sel.decoder.pointer_k.weight.copy_(torch.eye(16))
            sel.decoder.stop.copy_(50 * q_star)
        out = sel.forward_train(vision, text, mask, alpha=1.0, tau=1.0, k_bar=2.0, t_max=4)
        assert out["k"].tolist() == [0, 0], "the fixture must stop at once"
        out["pi"].retain_grad()
        out["expected_length"].sum().backward()
        stop_step_gradient = float(out["pi"].grad[:, 0, -1].abs().max())
        assert (stop_step_gradient > 1e-6) == expect_gradient, (horizon, stop_step_gradient)
