"""The set-level policy gradient: the per-sample cost and log-probability by hand, the estimator on a toy bandit,
and the term inside a micro fit of the removal surrogate."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from steprune.data.collate import InstructCollator
from steprune.training.policy_gradient import answer_cost, reinforce_loss, trajectory_log_prob
from steprune.training.stepprune_module import StepPruneModule
from tests.training.test_stepprune_module import backbone, cpu_trainer, loaders, records  # noqa: F401 (fixture)


def test_answer_cost_is_the_per_sample_ce_plus_kd_times_kl():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 1, -100], [-100, -100, -100, -100, -100]])
    teacher = torch.randn(2, 4, 7).log_softmax(-1)
    cost = answer_cost(logits, labels, None, 0.0)
    ce = F.cross_entropy(logits[0, 1:3], torch.tensor([3, 1]))
    assert float(cost[0]) == pytest.approx(float(ce), rel=1e-6)
    assert float(cost[1]) == 0.0, "a sample without answer tokens costs nothing"
    student = logits[0, 1:3].log_softmax(-1)
    kl = (teacher[0, 1:3].exp() * (teacher[0, 1:3] - student)).sum(-1).mean()
    with_kd = answer_cost(logits, labels, teacher, 0.5)
    assert float(with_kd[0]) == pytest.approx(float(ce + 0.5 * kl), rel=1e-6)
    same = answer_cost(logits, labels, logits[:, :-1].log_softmax(-1), 1.0)
    assert float(same[0]) == pytest.approx(float(ce), rel=1e-5), "KL to itself is 0"
    with pytest.raises(ValueError, match="log-probabilities"):
        answer_cost(logits, labels, None, 1.0)


def test_trajectory_log_prob_sums_the_valid_steps_stop_included():
    pi = torch.tensor([[[0.1, 0.6, 0.3], [0.5, 0.0, 0.5], [0.2, 0.2, 0.6]]])  # N = 2, index 2 = STOP
    actions = torch.tensor([[1, 2, 0]])
    valid = torch.tensor([[True, True, False]])  # the sample stopped at step 2
    assert float(trajectory_log_prob(pi, valid, actions)[0]) == pytest.approx(math.log(0.6) + math.log(0.5))


def test_reinforce_with_a_greedy_baseline_finds_the_cheapest_token():
    """A one-step bandit over 6 tokens, token 4 the only one without cost: sampled actions, the greedy action as
    baseline; the estimator must move the argmax there (a flipped sign or a baseline that leaks into the gradient
    would not)."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.zeros(6, requires_grad=True)
    with torch.no_grad():
        theta[0] = 0.5  # the greedy choice starts elsewhere
    opt = torch.optim.Adam([theta], lr=0.05)
    cost = torch.tensor([1.0, 0.8, 0.9, 0.7, 0.0, 1.0])
    for _ in range(200):
        pi = theta.softmax(-1).expand(32, 1, 6)  # (B, T=1, N+1)
        actions = torch.multinomial(pi[:, 0], 1, generator=gen)  # (B, 1)
        greedy = theta.argmax().expand(32)
        advantage = cost[actions[:, 0]] - cost[greedy]
        loss = reinforce_loss(trajectory_log_prob(pi, torch.ones(32, 1, dtype=torch.bool), actions), advantage)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert int(theta.argmax()) == 4
    assert float(theta.detach().softmax(-1)[4]) > 0.8


def test_policy_gradient_needs_sampled_trajectories(backbone):  # noqa: F811
    with pytest.raises(ValueError, match="explore"):
        StepPruneModule(backbone, surrogate="removal", policy_gradient=1.0)
    with pytest.raises(ValueError, match="explore"):
        StepPruneModule(backbone, surrogate="paper", policy_gradient=1.0)


def test_the_term_reaches_the_pointer_and_a_micro_fit_logs_it(backbone, tmp_path):  # noqa: F811
    """Alone (every other weight 0 but the straight-through path's own loss), the policy-gradient term moves the
    pointer's weights; a 3-step fit logs a finite term and advantage."""
    torch.manual_seed(0)
    module = StepPruneModule(
        backbone, t_max=4, surrogate="removal", kd=1.0, explore=True, policy_gradient=1.0, warmup_steps=1
    )
    batch = InstructCollator(module.processor, "train")(records(4))
    vision = module.adapter.encode_images(pixel_values=batch["pixel_values"])
    prompt = batch["labels"] == -100
    text, text_mask = module.adapter.prompt_embeddings(batch["input_ids"], batch["attention_mask"], prompt)
    out = module.selector.forward_train(
        vision.vision_features, text, text_mask, explore=True, generator=torch.Generator().manual_seed(1)
    )
    lm = module._lm_removal(batch, out)
    full = module._full_logprobs(batch, vision)
    pg, advantage = module._policy_gradient(batch, vision, text, text_mask, out, lm.logits, full, 0.5, 16)
    assert math.isfinite(float(pg)) and math.isfinite(float(advantage))
    pg.backward()
    grads = [p.grad for n, p in module.selector.named_parameters() if "decoder" in n and p.grad is not None]
    assert grads and max(float(g.abs().max()) for g in grads) > 0

    logged: list[tuple[float, float]] = []

    class Log(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            m = trainer.callback_metrics
            logged.append((float(m["train/policy_gradient"]), float(m["train/advantage"])))

    train, val = loaders(backbone)
    cpu_trainer(3, [Log()], tmp_path).fit(module, train, val)
    assert len(logged) == 3 and all(math.isfinite(a) and math.isfinite(b) for a, b in logged)


def test_the_set_objective_of_every_token_has_no_kl_and_of_fewer_tokens_some(backbone):  # noqa: F811
    """`steprune.eval.set_objective`: uniform keeping all 16 tokens is the full-token model (KL 0, K 16); keeping 2
    loses information (KL > 0)."""
    from steprune.eval.set_objective import set_objective
    from steprune.pruned_vlm import PrunedVLM

    module = StepPruneModule(backbone, surrogate="removal", kd=1.0).eval()
    batch = InstructCollator(module.processor, "train")(records(4))
    for budget, check in ((16, lambda kl: kl < 1e-5), (2, lambda kl: kl > 1e-4)):
        methods = {"uniform": PrunedVLM(module.vlm, module.processor, method="uniform", budget=budget)}
        result = set_objective(module, [batch], methods, budget)["uniform"]
        assert result["k"] == budget and check(result["kl"]), (budget, result)
    with pytest.raises(ValueError, match="at least one batch"):
        set_objective(module, [], methods, 2)
