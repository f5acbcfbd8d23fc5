"""The pointer loop (methods.md §1.2): shapes, masking, STOP, T_max, and batch == each sample alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from steprune.selector.pointer import PointerDecoder

D = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread wake-ups that dominate on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def micro_decoder(seed: int = 0) -> PointerDecoder:
    torch.manual_seed(seed)
    return PointerDecoder(D, num_layers=2, num_heads=4, mlp_ratio=2.0)


def oracle_decoder(q_star: torch.Tensor, stop: torch.Tensor) -> PointerDecoder:
    """A decoder whose pointer logits are the fixed u_i = q*.h_i / sqrt(D), u_STOP = q*.s / sqrt(D).

    W_q maps everything to q* (zero weight, bias q*) and W_k is the identity, so the hard policy must
    take the tokens in descending u and stop as soon as the best remaining token scores below STOP.
    """
    dec = micro_decoder()
    with torch.no_grad():
        dec.pointer_q = nn.Linear(D, D)
        dec.pointer_q.weight.zero_()
        dec.pointer_q.bias.copy_(q_star)
        dec.pointer_k.weight.copy_(torch.eye(D))
        dec.stop.copy_(stop)
    return dec


def check_trajectory(out, n: int, t_max: int) -> None:
    """Invariants every trajectory must satisfy, whatever the weights."""
    b, steps = out.actions.shape
    pi = out.pi.detach()
    assert steps <= t_max and out.pi.shape == (b, steps, n + 1)
    assert out.chosen.shape == out.chosen_mask.shape == (b, t_max)
    torch.testing.assert_close(pi.sum(-1), torch.ones(b, steps, dtype=pi.dtype))
    for s in range(b):
        valid = out.step_valid[s]
        last = int(valid.sum())
        assert bool(valid[:last].all()) and not bool(valid[last:].any()), "valid steps form a prefix"
        acts = out.actions[s, :last].tolist()
        assert n not in acts[:-1], "STOP ends the episode"
        assert acts[-1] == n or last == t_max, "an episode ends only at STOP or T_max"
        tokens = [a for a in acts if a != n]
        assert len(tokens) == len(set(tokens)) == int(out.lengths[s]), "a chosen token is never re-chosen"
        assert out.chosen[s][out.chosen_mask[s]].tolist() == tokens
        for t, a in enumerate(acts):  # once chosen, a token has exactly zero probability afterwards
            if a != n:
                assert float(pi[s, t + 1 :, a].abs().sum()) == 0.0
        assert float(pi[s, :last, n].min()) > 0.0, "STOP is never masked"


def test_shapes_masking_and_tmax_on_random_weights():
    torch.manual_seed(1)
    h = torch.randn(3, 10, D)
    out = micro_decoder()(h, t_max=6, tau=0.7)
    check_trajectory(out, n=10, t_max=6)
    out = micro_decoder()(h, t_max=10)  # T_max = N: every token may be chosen
    check_trajectory(out, n=10, t_max=10)


def test_stop_and_tmax_follow_the_oracle_logits():
    torch.manual_seed(2)
    n = 12
    q_star = torch.randn(D)
    stop = q_star * 0.0  # u_STOP = 0: K = number of tokens with positive q*.h_i
    h = torch.randn(3, n, D)
    h[2] = -h[2].abs() * q_star.sign()  # every token of sample 2 scores below STOP: K = 0
    dec = oracle_decoder(q_star, stop)
    logits = h @ q_star
    expected_k = (logits > 0).sum(dim=1).tolist()
    assert len(set(expected_k)) == 3 and expected_k[2] == 0, "the fixture gives three different K"

    out = dec(h, t_max=n)
    check_trajectory(out, n, n)
    assert out.lengths.tolist() == expected_k
    for s in range(3):
        order = logits[s].argsort(descending=True)[: expected_k[s]].tolist()
        assert out.chosen[s][out.chosen_mask[s]].tolist() == order, "tokens in descending logit, then STOP"
        assert int(out.step_valid[s].sum()) == expected_k[s] + 1
    assert out.actions.shape[1] == max(expected_k) + 1, "the batch runs until every sample stopped"

    t_max = 3
    short = dec(h, t_max=t_max)
    check_trajectory(short, n, t_max)
    assert short.lengths.tolist() == [min(k, t_max) for k in expected_k]
    assert short.actions.shape[1] <= t_max


def test_batch_equals_each_sample_alone():
    torch.manual_seed(3)
    n = 9
    q_star = torch.randn(D)
    h = torch.randn(4, n, D)
    for dec in (micro_decoder(seed=4), oracle_decoder(q_star, 0.3 * q_star)):
        batch = dec(h, t_max=7)
        for s in range(4):
            alone = dec(h[s : s + 1], t_max=7)
            steps = int(alone.step_valid.sum())
            assert int(batch.step_valid[s].sum()) == steps
            assert torch.equal(alone.actions[0, :steps], batch.actions[s, :steps])
            assert torch.equal(alone.chosen[0], batch.chosen[s]) and torch.equal(alone.lengths[0], batch.lengths[s])
            torch.testing.assert_close(alone.pi[0, :steps], batch.pi[s, :steps], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t_max", [0, 11, -1])
def test_t_max_beyond_n_is_a_clear_error(t_max):
    with pytest.raises(ValueError, match=r"t_max must be an int in 1\.\.N=10"):
        micro_decoder()(torch.randn(1, 10, D), t_max=t_max)


def test_continuation_keeps_the_hard_selection_and_runs_every_step():
    """`continue_after_stop`: same hard selection and prefix; T_max steps, each fed back a fresh visual token."""
    torch.manual_seed(5)
    n, t_max = 12, 9
    q_star = torch.randn(D)
    h = torch.randn(3, n, D)
    h[2] = -h[2].abs() * q_star.sign()  # sample 2 stops at once (K = 0)
    for dec in (micro_decoder(seed=6), oracle_decoder(q_star, 0.0 * q_star)):
        plain = dec(h, t_max=t_max)
        cont = dec(h, t_max=t_max, continue_after_stop=True)
        assert torch.equal(plain.chosen, cont.chosen) and torch.equal(plain.lengths, cont.lengths)
        assert cont.pi.shape[1] == t_max and bool(cont.horizon.all())
        assert torch.equal(plain.horizon, plain.step_valid)
        for s in range(3):
            steps = int(plain.step_valid[s].sum())
            assert torch.equal(plain.actions[s, :steps], cont.actions[s, :steps])
            assert torch.equal(plain.step_valid[s], cont.step_valid[s, : plain.step_valid.shape[1]])
            torch.testing.assert_close(plain.pi[s, :steps], cont.pi[s, :steps], rtol=1e-5, atol=1e-6)
            # after its STOP the sample goes on choosing visual tokens, never one twice, STOP never masked
            fed = [int(cont.pi[s, t, :n].argmax()) for t in range(t_max)]
            assert len(set(fed)) == t_max
            assert float(cont.pi[s, :, n].min()) > 0.0
