"""Imitation of a training-free teacher: an auxiliary loss that points StepPrune's pointer at a teacher's tokens.

    module = StepPruneModule(backbone, surrogate="removal", teacher="mmtok", imitate=1.0)
    steprune train fit --config experiments/stepprune_world.yaml --config experiments/stepprune_removal.yaml \
        --model.teacher mmtok --model.imitate 1.0

Beyond methods.md (session 13): the LM (+ kd) gradient reaches the pointer only through the straight-through
gate, one scalar per token per answer, and on the world the selector it trains keeps worse tokens than the
training-free methods at the same K (reports/stepprune_controller_kp.md: 74.8 % retention at K 16 against MMTok
82.9 %). The teacher gives a dense label instead: a registered pre-LLM method (MMTok, VisionZip, HoloV, ...)
chooses `budget` tokens for the same prompt (the answer removed) and image, and on the pointer's *own*
trajectory (on-policy, as DAgger: no teacher forcing, the states are the ones inference visits) every step is
asked to put its visual mass on a teacher token it has not chosen yet:

    loss_t = -log( sum_{j in T, j not chosen} pi_t[j] / sum_{j visual} pi_t[j] ),   mean over the steps before STOP

The ratio leaves STOP out (pi_t restricted to the visual tokens), so the imitation never asks for a longer or
shorter selection: K stays with the controller and the LM loss. A step after every teacher token was chosen is
skipped. With `imitate: 0` (the default) nothing of this runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from steprune.pruned_vlm import PrunedVLM
from steprune.pruners.contract import PrePrunerBase


def teacher_vlm(model: Any, processor: Any, method: str) -> PrunedVLM:
    """The frozen MLLM with the teacher method; refuses an in-LLM method (its choice is not made before the LLM)."""
    vlm = PrunedVLM(model, processor, method=method, budget=1)
    pre_llm = type(vlm.pruner).layer_drops is PrePrunerBase.layer_drops  # no in-LLM drops (FastV, DART, ...)
    if not pre_llm or method in ("steprune", "identity"):
        raise ValueError(
            f"teacher {method!r} is not a training-free method that chooses before the LLM: use one of "
            "(mmtok, visionzip, holov, prumerge_plus, uniform, ...)"
        )
    return vlm


@torch.no_grad()
def teacher_set(
    vlm: PrunedVLM, input_ids: Tensor, attention_mask: Tensor, prompt: Tensor, vision: Any, budget: int
) -> Tensor:
    """(B, N) bool: the tokens the teacher keeps at `budget` for the prompt rows (`prompt` (B, L) bool: the answer
    and padding off), on the already encoded images `vision`."""
    vlm.budget = budget
    ctx = vlm.context(input_ids, attention_mask * prompt.to(attention_mask.dtype), vision)
    result = vlm.pruner.select(ctx)
    counts = torch.zeros(ctx.batch_size, ctx.num_tokens, dtype=torch.long, device=result.keep.device)
    return counts.scatter_add_(1, result.keep, result.keep_mask.long()) > 0  # padding adds 0 at index 0


def imitation_loss(pi: Tensor, step_valid: Tensor, actions: Tensor, teacher: Tensor) -> Tensor:
    """Mean over valid visual steps of -log(pi_t mass on unchosen teacher tokens / pi_t mass on visual tokens).

    pi (B, T, N+1), step_valid (B, T), actions (B, T) long (N = STOP), teacher (B, N) bool."""
    b, t, n1 = pi.shape
    n = n1 - 1
    visual_action = step_valid & (actions < n)  # (B, T): the steps that chose a token (not the STOP step)
    chosen = torch.zeros(b, t, n, dtype=torch.bool, device=pi.device)  # chosen before step t
    onehot = torch.nn.functional.one_hot(actions.clamp(max=n - 1), n).bool() & visual_action[..., None]
    chosen[:, 1:] = onehot.cumsum(dim=1)[:, :-1] > 0
    open_teacher = teacher[:, None, :] & ~chosen  # (B, T, N)
    usable = visual_action & open_teacher.any(dim=-1)  # (B, T)
    if not bool(usable.any()):
        return pi.sum() * 0.0
    visual = pi[..., :n]  # (B, T, N)
    hit = (visual * open_teacher).sum(-1)  # (B, T)
    mass = visual.sum(-1)  # (B, T)
    ratio = (hit.clamp(min=1e-12).log() - mass.clamp(min=1e-12).log())[usable]
    return -ratio.mean()
