"""BudgetController: the dual-ascent step on λ, its state in checkpoints, and a real fit that it steers."""

from __future__ import annotations

import pytest
import torch

from steprune.training.budget import BudgetController
from steprune.training.stepprune_module import StepPruneModule
from tests.training.test_stepprune_module import backbone, cpu_trainer, loaders  # noqa: F401 (fixture)


def test_update_raises_lambda_above_target_lowers_it_below_and_may_turn_it_into_a_reward():
    control = BudgetController(target_k=16, rate=0.1, gain=0.5)
    assert control.update(k_bar=32.0, lam_scale=1.0) == pytest.approx(1.1 + 0.5)  # error clipped at +1
    assert control.integral == pytest.approx(1.1)
    control = BudgetController(target_k=16, rate=0.1, gain=0.5)
    assert control.update(k_bar=12.0, lam_scale=1.0) == pytest.approx(1.0 - 0.025 - 0.125)
    control = BudgetController(target_k=16, rate=0.1, gain=0.5)
    assert control.update(k_bar=16.0, lam_scale=1.0) == pytest.approx(1.0)  # on target: unchanged
    for _ in range(30):  # far below the target for long: λ changes sign, keeping tokens is rewarded
        control.update(k_bar=4.0, lam_scale=1.0)
    assert control.multiplier < 0


def test_no_update_when_disabled_while_lambda_warms_up_or_before_k_is_known():
    assert BudgetController(None).update(k_bar=100.0, lam_scale=1.0) == 1.0
    assert BudgetController(16).update(k_bar=100.0, lam_scale=0.99) == 1.0
    assert BudgetController(16).update(k_bar=-1.0, lam_scale=1.0) == 1.0


def test_integral_stays_within_its_bounds():
    control = BudgetController(target_k=4, rate=1.0, gain=0.0, min_multiplier=-0.5, max_multiplier=2.0)
    for _ in range(5):
        control.update(k_bar=40.0, lam_scale=1.0)
    assert control.multiplier == 2.0
    for _ in range(10):
        control.update(k_bar=0.0, lam_scale=1.0)
    assert control.multiplier == -0.5


@pytest.mark.parametrize(
    "kwargs",
    [{"target_k": 0}, {"target_k": 8, "rate": 0}, {"target_k": 8, "gain": -1}, {"target_k": 8, "min_multiplier": 2.0}],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        BudgetController(**kwargs)


def test_state_round_trip_and_a_different_target_is_refused():
    control = BudgetController(target_k=16)
    control.update(k_bar=30.0, lam_scale=1.0)
    restored = BudgetController(target_k=16)
    restored.load_state_dict(control.state_dict())
    assert (restored.multiplier, restored.integral) == (control.multiplier, control.integral)
    with pytest.raises(ValueError, match="target_k 16"):
        BudgetController(target_k=32).load_state_dict(control.state_dict())


def test_fit_steers_lambda_towards_the_target_and_resume_keeps_it(backbone, tmp_path):  # noqa: F811
    """A target far below the selector's K raises λ at every step; the effective λ reaches the loss (logged as
    train/lam) and a resumed run starts from the saved multiplier."""
    train, val = loaders(backbone)
    control = BudgetController(target_k=0.5, rate=0.2, gain=0.0)
    module = StepPruneModule(backbone, t_max=8, lam=0.5)
    module.k_bar.fill_(8.0)  # a selector that keeps everything: far above the target
    trainer = cpu_trainer(2, [control], tmp_path)
    trainer.fit(module, train, val)
    assert control.multiplier > 1.0 and module.lam_multiplier == control.multiplier
    logged = float(trainer.callback_metrics["train/lam"])
    assert logged > 0.5  # step 2 used the multiplier raised after step 1 (k_bar was 8, far above the target)
    trainer.save_checkpoint(tmp_path / "step2.ckpt")
    saved = torch.load(tmp_path / "step2.ckpt", weights_only=False)["callbacks"]
    assert any(state.get("multiplier") == control.multiplier for state in saved.values())
    resumed_control = BudgetController(target_k=0.5, rate=0.2, gain=0.0)
    resumed = StepPruneModule(backbone, t_max=8, lam=0.5)
    cpu_trainer(3, [resumed_control], tmp_path).fit(resumed, train, val, ckpt_path=tmp_path / "step2.ckpt")
    # one more step from the saved multiplier (K is still far above target: error clipped at +1)
    assert resumed_control.steps == 3
    assert resumed_control.multiplier == pytest.approx(control.multiplier + 0.2)
    assert resumed.lam_multiplier == resumed_control.multiplier


def test_a_target_above_t_max_is_refused_before_training(backbone, tmp_path):  # noqa: F811
    train, val = loaders(backbone)
    with pytest.raises(ValueError, match="t_max 8"):
        cpu_trainer(1, [BudgetController(target_k=12)], tmp_path).fit(StepPruneModule(backbone, t_max=8), train, val)


def test_a_checkpoint_without_controller_state_resumes_with_the_configured_lambda(backbone, tmp_path):  # noqa: F811
    """Checkpoints written before the controller existed (or without it) carry no state for it: they resume."""
    train, val = loaders(backbone)
    first = cpu_trainer(2, [], tmp_path)
    first.fit(StepPruneModule(backbone, t_max=8), train, val)
    first.save_checkpoint(tmp_path / "old.ckpt")
    assert not any(
        "BudgetController" in key for key in torch.load(tmp_path / "old.ckpt", weights_only=False)["callbacks"]
    )
    control = BudgetController()  # target_k None: λ stays fixed
    module = StepPruneModule(backbone, t_max=8)
    resumed = cpu_trainer(3, [control], tmp_path)
    resumed.fit(module, train, val, ckpt_path=tmp_path / "old.ckpt")
    assert resumed.global_step == 3 and control.steps == 3 and module.lam_multiplier == 1.0
