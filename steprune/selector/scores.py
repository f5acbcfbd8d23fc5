"""The training surrogate's soft quantities (methods.md §1.3-1.4): alive probability, soft scores, E[K].

All three read the pointer trajectory (`PointerOutput.pi`, `.step_valid`) and are differentiable in it.

    a = alive_probability(out.pi, out.step_valid)                 # (B, T)
    s = soft_scores(out.pi, out.step_valid, gamma=0.9)            # (B, N), aggregation "full"
    ek = expected_length(out.pi, out.step_valid)                  # (B,)

Definitions (steps t = 1..T, STOP = index N of pi; sums run over each sample's valid steps, or over the
`horizon` steps where one is given — the pointer's continuation, see `PointerDecoder`):
* alive:  A_1 = 1,  A_t = prod_{j<t} (1 - pi_j[STOP]).
* soft score of visual token i, by `aggregation`:
    - "full":        s_i = sum_t gamma^(t-1) * A_t * pi_t[i]   (the specified form)
    - "alive_only":  s_i = sum_t A_t * pi_t[i]                  ("full" with gamma = 1)
    - "uniform_sum": s_i = sum_t pi_t[i]                        (no decay, no alive weight)
    - "last_step":   s_i = pi_{t_last}[i], t_last = the sample's last valid step (its STOP step, or T_max)
* expected length: E[K] = sum_t A_t (as specified; strictly the expected number of steps, STOP step
  included, i.e. E[#tokens] + P(stop before T_max)).

With a horizon (the pointer's continuation over all T_max steps) the alive-weighted forms ("full",
"alive_only") and E[K] sum over every step t = 1..T_max, as methods.md §1.4 writes E[K]: the steps after
a sample's STOP count with their small A_t, so lowering a STOP probability raises the weight of the tokens
the pointer would choose next — the language-model loss can ask for a longer selection, not only the
length term for a shorter one. "uniform_sum" and "last_step" have no alive weight and keep to the steps the
hard policy took.

Choice where the specification is open: "valid steps" are steps 1..t_stop of each sample (the step at
which it chose STOP counts; the forced steps after it do not). Summing to T_max over the plain loop would
make a sample's surrogate depend on which other samples share its batch (the batched loop ends when all
samples stopped); the T_max sum is offered only over the pointer's continuation (a `horizon`), where every
sample runs T_max steps of its own (`StepPruneSelector(horizon="t_max")`).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

Aggregation = Literal["full", "last_step", "uniform_sum", "alive_only"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)


def alive_probability(pi: Tensor, step_valid: Tensor) -> Tensor:
    """A_t (B, T) from pi (B, T, N+1); zero on invalid steps."""
    survive = 1.0 - pi[..., -1]  # (B, T): 1 - pi_t[STOP]
    ones = torch.ones_like(survive[:, :1])
    alive = torch.cat([ones, survive[:, :-1]], dim=1).cumprod(dim=1)  # A_t = prod_{j<t}
    return alive * step_valid.to(alive.dtype)


def soft_scores(
    pi: Tensor,
    step_valid: Tensor,
    gamma: float = 1.0,
    aggregation: Aggregation = "full",
    horizon: Tensor | None = None,
) -> Tensor:
    """Per-token soft score s (B, N) from the trajectory; see the module docstring for each aggregation."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    visual = pi[..., :-1]  # (B, T, N)
    valid = step_valid.to(pi.dtype)  # (B, T)
    if aggregation == "last_step":
        last = step_valid.long().cumsum(dim=1).argmax(dim=1)  # (B,): index of the last valid step
        return visual.gather(1, last[:, None, None].expand(-1, 1, visual.shape[-1])).squeeze(1)
    if aggregation == "uniform_sum":
        weight = valid
    else:
        weight = alive_probability(pi, step_valid if horizon is None else horizon)
        if aggregation == "full":
            steps = torch.arange(pi.shape[1], device=pi.device, dtype=pi.dtype)
            weight = weight * gamma**steps  # gamma^(t-1) for t = 1..T
    return torch.einsum("bt,btn->bn", weight, visual)


def expected_length(pi: Tensor, steps: Tensor) -> Tensor:
    """E[K] = sum_t A_t over `steps` (B, T) (the valid steps, or the continuation's horizon): (B,),
    differentiable in pi[..., STOP]."""
    return alive_probability(pi, steps).sum(dim=1)
