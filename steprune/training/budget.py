"""Budget-targeted training: a stateful callback that steers λ so that StepPrune's mean K settles at a target.

    Trainer(callbacks=[BudgetController(target_k=16)])         # ≈ 88.9 % pruning of 144 tokens
    steprune train fit --config experiments/stepprune_world.yaml --budget.target_k 16

The length penalty λ·E[K]/N trades accuracy for tokens, but which K a given λ ends at is not known in advance:
on the built-in world the same λ = 0.1 ended at K 25.9, 4.6 and 3.8 with seeds 0, 1 and 2. Comparing methods "at
the same budget" needs K itself as the knob. This callback is a proportional-integral dual-ascent controller on
λ (λ is the Lagrange multiplier of the constraint E[K] = target, so it may change sign). After every optimisation
step, with k_bar the module's running mean of the hard K and error = clip((k_bar - target) / target, -1, 1):

    integral   <- clip(integral + rate * error, min_multiplier, max_multiplier)      # starts at 1
    multiplier <- integral + gain * error

and the module's length term becomes lam_scale * lam * multiplier * E[K]/N. Too many tokens raise the penalty, too
few lower it and, below zero, turn it into a reward for keeping tokens. It starts acting once the λ warm-up
(`LengthPenaltySchedule`) is over (`module.lam_scale >= 1`), so the selector first learns which tokens matter. Its
state goes into checkpoints, so a resumed run continues with the same λ. With `target_k=None` (the default, and
what `make train` uses) it does nothing and λ stays fixed, as in the paper.

Measured on the built-in world (reports/stepprune_training_study.md, "Steering K"): with target 16 no variant held
K there. A positive λ of 0.2-0.4 for ~20 steps takes K from T_max 32 below 16 and K keeps falling after λ drops;
a negative λ raises it only slowly (λ -1 moved K from 7 to 8.8 in 80 steps), because a confident early STOP
saturates the gradient of E[K]. The runs ended at K 3.6-8.7. Treat it as a knob for experiments, not a guarantee.
"""

from __future__ import annotations

from typing import Any

import lightning as L


class BudgetController(L.Callback):
    """Steers `module.lam_multiplier` so that the running mean of the hard K (`module.k_bar`) reaches `target_k`."""

    def __init__(
        self,
        target_k: float | None = None,
        rate: float = 0.05,
        gain: float = 1.0,
        min_multiplier: float = -10.0,
        max_multiplier: float = 10.0,
    ) -> None:
        if target_k is not None and target_k <= 0:
            raise ValueError(f"target_k must be > 0 (a number of visual tokens), got {target_k}")
        if rate <= 0 or gain < 0 or not min_multiplier <= 1 <= max_multiplier:
            raise ValueError(
                f"need rate > 0, gain >= 0 and min_multiplier <= 1 <= max_multiplier, got {rate}, {gain}, "
                f"{min_multiplier}, {max_multiplier}"
            )
        self.target_k, self.rate, self.gain = target_k, rate, gain
        self.min_multiplier, self.max_multiplier = min_multiplier, max_multiplier
        self.integral = self.multiplier = 1.0
        self.steps = 0

    def _check_target(self, module: L.LightningModule) -> None:
        t_max = getattr(getattr(module, "selector", None), "t_max", None)
        if self.target_k is not None and t_max is not None and self.target_k > t_max:
            raise ValueError(
                f"target_k {self.target_k} is above the selector's t_max {t_max}: K can never reach it; "
                f"raise --model.t_max or lower --budget.target_k"
            )

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._check_target(module)
        # `>`, not the schedules' `!=`: a checkpoint written before this callback existed has no state for it
        # (steps 0 at any trainer step) and must still resume, with λ as configured
        if self.steps > trainer.global_step:
            raise RuntimeError(
                f"BudgetController has applied {self.steps} steps but the trainer is at step {trainer.global_step}: "
                "the checkpoint and the callback state disagree"
            )
        module.lam_multiplier = self.multiplier

    def update(self, k_bar: float, lam_scale: float) -> float:
        """One controller step from the current running K; returns the new multiplier."""
        if self.target_k is None or lam_scale < 1.0 or k_bar < 0:  # disabled, λ still warming up, K unknown yet
            return self.multiplier
        error = max(-1.0, min(1.0, (k_bar - self.target_k) / self.target_k))
        self.integral = max(self.min_multiplier, min(self.max_multiplier, self.integral + self.rate * error))
        self.multiplier = self.integral + self.gain * error
        return self.multiplier

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        self.steps = trainer.global_step
        module.lam_multiplier = self.update(float(module.k_bar), float(module.lam_scale))
        module.log("schedule/lam_multiplier", self.multiplier)

    def state_dict(self) -> dict[str, Any]:
        return {
            "integral": self.integral,
            "multiplier": self.multiplier,
            "steps": self.steps,
            "target_k": self.target_k,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("target_k") != self.target_k:
            raise ValueError(
                f"this checkpoint was trained towards target_k {state_dict.get('target_k')}, not {self.target_k}: "
                "resume with the same --budget.target_k, or start a new run"
            )
        self.integral, self.multiplier = float(state_dict["integral"]), float(state_dict["multiplier"])
        self.steps = int(state_dict["steps"])
