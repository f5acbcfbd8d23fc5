"""Soft scores, alive probability and E[K] (methods.md §1.3-1.4) against naive Python loops."""

from __future__ import annotations

import pytest
import torch

from steprune.selector.scores import AGGREGATIONS, alive_probability, expected_length, soft_scores


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread wake-ups that dominate on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def trajectory(b: int = 3, t: int = 5, n: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    pi = torch.randn(b, t, n + 1, generator=gen, dtype=torch.float64).softmax(-1)
    steps = [t, 2, 1][:b]  # sample 0 never stopped, 1 stopped at step 2, 2 stopped at step 1
    valid = torch.arange(t)[None] < torch.tensor(steps)[:, None]
    return pi, valid, steps


def naive(pi, steps, gamma, aggregation):
    b, _, n1 = pi.shape
    scores = torch.zeros(b, n1 - 1, dtype=pi.dtype)
    lengths = torch.zeros(b, dtype=pi.dtype)
    for s in range(b):
        alive = 1.0
        for t in range(steps[s]):  # t is 0-based: step t+1
            lengths[s] += alive
            for i in range(n1 - 1):
                p = float(pi[s, t, i])
                if aggregation == "full":
                    scores[s, i] += gamma**t * alive * p
                elif aggregation == "alive_only":
                    scores[s, i] += alive * p
                elif aggregation == "uniform_sum":
                    scores[s, i] += p
                elif t == steps[s] - 1:  # last_step
                    scores[s, i] = p
            alive *= 1.0 - float(pi[s, t, n1 - 1])
    return scores, lengths


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_soft_scores_equal_a_naive_loop(aggregation):
    pi, valid, steps = trajectory()
    expected, _ = naive(pi, steps, 0.8, aggregation)
    torch.testing.assert_close(soft_scores(pi, valid, 0.8, aggregation), expected)


def test_alive_probability_and_expected_length():
    pi, valid, steps = trajectory()
    _, lengths = naive(pi, steps, 1.0, "full")
    torch.testing.assert_close(expected_length(pi, valid), lengths)
    alive = alive_probability(pi, valid)
    assert alive[:, 0].tolist() == [1.0, 1.0, 1.0]
    torch.testing.assert_close(alive[0, 2], (1 - pi[0, 0, -1]) * (1 - pi[0, 1, -1]))
    assert float(alive[1, 2:].abs().sum()) == 0.0 and float(alive[2, 1:].abs().sum()) == 0.0


def test_alive_only_is_full_with_gamma_one_and_unknown_aggregation_fails():
    pi, valid, _ = trajectory(seed=1)
    torch.testing.assert_close(soft_scores(pi, valid, 1.0, "full"), soft_scores(pi, valid, 0.3, "alive_only"))
    with pytest.raises(ValueError, match="aggregation must be one of"):
        soft_scores(pi, valid, 1.0, "mean")


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_a_horizon_extends_the_alive_weighted_sums_to_every_step(aggregation):
    """With the pointer's continuation (horizon = all T steps) "full", "alive_only" and E[K] sum over t = 1..T;
    "uniform_sum" and "last_step" have no alive weight and keep to the hard steps."""
    pi, valid, steps = trajectory(seed=2)
    horizon = torch.ones_like(valid)
    every = [pi.shape[1]] * pi.shape[0]
    alive_weighted = aggregation in ("full", "alive_only")
    expected, _ = naive(pi, every if alive_weighted else steps, 0.8, aggregation)
    torch.testing.assert_close(soft_scores(pi, valid, 0.8, aggregation, horizon), expected)
    _, lengths = naive(pi, every, 1.0, "full")
    torch.testing.assert_close(expected_length(pi, horizon), lengths)
    assert float((lengths - expected_length(pi, valid))[1:].min()) > 0, "stopped samples gain the later A_t"
