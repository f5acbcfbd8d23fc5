"""A set-level policy gradient for the removal surrogate: REINFORCE with the greedy rollout as baseline.

Why (reports/stepprune_offset_teacher.md): on base v3 at K = 16 the straight-through selector's own hard set has a
higher training objective (CE + KL to the full-token model) than the sets MMTok, HoloV and VisionZip pick without
training — the local gradient of the mask does not find the sets its objective prefers. A score-function term
compares whole sets instead: each training sample's pointer trajectory is drawn from pi (`explore`), its cost is
the objective that set gets from the frozen LLM, and the greedy trajectory of the same input (what inference keeps)
is the baseline (Kool et al., ICLR 2019, "Attention, learn to solve routing problems!"):

    advantage_b = cost(sampled_b) - cost(greedy_b)          # cost = CE + kd * KL + lam * K / N, per sample
    loss_pg     = mean_b advantage_b * log p(trajectory_b)  # log p = sum over the sample's steps, STOP included

A sampled set that beats the greedy one becomes more likely, one that loses less likely; the cost's length term is
the controller's current lambda, so the estimator does not simply ask for more tokens.

    cost = answer_cost(student_logits, labels, teacher_logprobs, kd)   # (B,)
    logp = trajectory_log_prob(out["pi"], out["step_valid"], out["actions"])  # (B,)
    loss = loss + weight * reinforce_loss(logp, cost_sampled - cost_greedy)
"""

from __future__ import annotations

from torch import Tensor


def answer_cost(student_logits: Tensor, labels: Tensor, teacher_logprobs: Tensor | None, kd: float) -> Tensor:
    """(B,): per sample, the mean over its answer tokens of CE + kd * KL(p_full ‖ p_student).

    student_logits (B, S, V); labels (B, S) with -100 off the answer; teacher_logprobs (B, S-1, V) log-softmax of the
    full-token model at the same positions (None when kd = 0). A sample without answer tokens costs 0."""
    targets = labels[:, 1:]  # (B, S-1): token t+1 is predicted at position t
    answer = targets != -100
    student = student_logits[:, :-1].float().log_softmax(-1)  # (B, S-1, V)
    per_token = -student.gather(-1, targets.clamp(min=0)[..., None])[..., 0]  # (B, S-1)
    if kd > 0:
        if teacher_logprobs is None:
            raise ValueError("kd > 0 needs the full-token model's log-probabilities")
        teacher = teacher_logprobs.float()
        per_token = per_token + kd * (teacher.exp() * (teacher - student)).sum(-1)
    count = answer.sum(-1)  # (B,)
    return (per_token * answer).sum(-1) / count.clamp(min=1)


def trajectory_log_prob(pi: Tensor, step_valid: Tensor, actions: Tensor) -> Tensor:
    """(B,): sum over each sample's valid steps of log pi_t(a_t), the STOP step included.

    pi (B, T, N+1) probabilities, step_valid (B, T) bool, actions (B, T) long (N = STOP)."""
    chosen = pi.gather(-1, actions[..., None])[..., 0]  # (B, T)
    return (chosen.clamp(min=1e-12).log() * step_valid).sum(-1)


def reinforce_loss(log_prob: Tensor, advantage: Tensor) -> Tensor:
    """Scalar: mean_b advantage_b * log_prob_b with the advantage held constant (a cost: lower is better)."""
    return (advantage.detach() * log_prob).mean()
