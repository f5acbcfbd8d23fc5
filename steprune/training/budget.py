"""The target-K controller (methods.md §1.8 item 4): dual ascent on λ so that StepPrune's mean K settles at K*.

    Trainer(callbacks=[BudgetController(target_k=16)])         # ≈ 88.9 % pruning of 144 tokens
    steprune train fit --config experiments/stepprune_world.yaml --budget.target_k 16

λ is the Lagrange multiplier of the equality constraint mean_b K_b / N = ρ* = K*/N. With c = mean_b E[K]_b / N - ρ*
(E[K]_b = Σ_t A_{b,t}, differentiable) the module's length term is the augmented Lagrangian

    λ · c + (μ / 2) · c²

and after every optimisation step, with the batch's mean hard K (all-reduced over DDP ranks by the module):

    λ <- λ + η · (mean_b K_b / N - ρ*)          # not clipped at 0: below the target it rewards tokens

Damping (beyond methods.md, a PI Lagrangian as in Stooke et al. 2020, "Responsive Safety in Reinforcement
Learning by PID Lagrangian Methods"): pure dual ascent is an integrator, and the selector's K answers λ with a lag
of hundreds of steps (the straight-through K is a hard argmax trajectory: E[K] moves long before the greedy stop
does), so λ winds up and K swings past K* (reports/stepprune_controller_trace.md: λ to −7.5, K 10 -> 28 at K* 16).
`kp` adds a proportional term on an exponential average ĉ of the hard constraint, and `lam_max` bounds the integral
(anti-windup); the penalty then uses

    λ_eff = λ + kp · ĉ,     λ <- clip(λ + η · c_hard, −lam_max, lam_max)

`kp=0, lam_max=None` is the plain dual ascent of methods.md §1.8 item 4.

The STOP-offset actuator (`actuator="stop_offset"`, beyond methods.md; session 13): the same integral, but on the
offset delta that inference adds to the STOP logit (the knob calibration bisects, §1.8 item 5) instead of on λ:

    delta <- delta + eta_offset · (mean_b K_b - K*_t)         # tokens; λ stays at lam_init

The module trains with delta in the pointer's logits (`selector.stop_offset`), so the hard K the LLM sees in
training is the one inference gives at that offset. Unlike λ, which acts on K only through hundreds of optimiser
steps of the STOP head's weights (reports/stepprune_controller_kp.md: K ignored λ in both directions), delta moves
every sample's K at once and monotonically (calibration.py), so the loop is a first-order one: stable for
0 < eta_offset · |dK/d delta| < 2 (measured on the world: about 4 tokens per unit of delta, the default gives
0.2). The learned STOP logit keeps what differs between images (K still varies per image); delta carries the
common level. The penalty stays λ·c + μ/2·c² with the fixed λ (0 by default): μ anchors E[K] near K*.

ρ* is warmed from T_max/N down to K*/N linearly over the first `warmup_steps` steps, so the selector first learns
which tokens matter while it keeps many. The constraint is on the batch mean: K still varies per image. The state
(λ, the steps applied, the target) goes into checkpoints, and the warm-up position is the trainer's global step,
so a resumed run continues λ and the warm-up exactly. With `target_k=None` (the default) it does nothing and the
module's fixed penalty λ·E[K]/N applies, as in the paper. This replaces the earlier PI controller on a λ multiplier
(sessions 5-7), which never held K = 16: one mechanism, not two.

Defaults η 0.5, μ 4 (session 9, a micro LLaVA with 16 visual tokens, T_max 8, K* 3, 40 steps, lr 3e-3): mean K over
the last 10 steps 2.7 (removal surrogate) and 2.25 (paper); η 1, μ 10 oscillated more (4.05 / 2.7). At lr 1e-3 both
surrogates fell to the floor min_k = 1 and stayed there for the rest of the 40 steps although λ turned negative
(−1 to −4.5): once STOP is confident at step 2 the gradient of E[K] saturates (the pathology of the earlier
controller). Measure on the world before trusting a setting.
"""

from __future__ import annotations

from typing import Any

import lightning as L

ACTUATORS: tuple[str, ...] = ("lambda", "stop_offset")


class BudgetController(L.Callback):
    """Dual ascent on the length multiplier λ towards a mean of `target_k` kept visual tokens."""

    def __init__(
        self,
        target_k: float | None = None,
        eta: float = 0.5,
        mu: float = 4.0,
        warmup_steps: int = 100,
        lam_init: float = 0.0,
        kp: float = 0.0,
        lam_max: float | None = None,
        smoothing: float = 0.9,
        actuator: str = "lambda",
        eta_offset: float = 0.05,
    ) -> None:
        if target_k is not None and target_k <= 0:
            raise ValueError(f"target_k must be > 0 (a number of visual tokens), got {target_k}")
        if eta <= 0 or mu < 0 or warmup_steps < 0:
            raise ValueError(f"need eta > 0, mu >= 0 and warmup_steps >= 0, got {eta}, {mu}, {warmup_steps}")
        if kp < 0 or (lam_max is not None and lam_max <= 0) or not 0 <= smoothing < 1:
            raise ValueError(
                f"need kp >= 0, lam_max > 0 (or None) and 0 <= smoothing < 1, got {kp}, {lam_max}, {smoothing}"
            )
        if actuator not in ACTUATORS:
            raise ValueError(f"actuator must be one of {ACTUATORS}, got {actuator!r}")
        if eta_offset <= 0:
            raise ValueError(f"eta_offset must be > 0 (logit units per token of error), got {eta_offset}")
        self.actuator, self.eta_offset = actuator, eta_offset
        self.stop_offset = 0.0  # delta on the STOP logit (actuator "stop_offset"; stays 0 with "lambda")
        self.target_k, self.eta, self.mu, self.warmup_steps = target_k, eta, mu, warmup_steps
        self.kp, self.lam_max, self.smoothing = kp, lam_max, smoothing
        self.lam = float(lam_init)
        self.c_ema: float | None = None  # exponential average of the hard constraint (None before the first step)
        self.steps = 0  # optimisation steps whose K has updated λ

    @property
    def active(self) -> bool:
        return self.target_k is not None

    def target_tokens(self, step: int, t_max: int) -> float:
        """The warmed target in tokens at `step`: T_max at step 0, K* from `warmup_steps` on."""
        assert self.target_k is not None, "target_tokens needs a target_k"
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return float(self.target_k)
        return t_max + (self.target_k - t_max) * step / self.warmup_steps

    @property
    def lam_effective(self) -> float:
        """The multiplier the penalty uses: λ plus the proportional term kp · ĉ (λ alone with the offset actuator)."""
        if self.actuator == "stop_offset":
            return self.lam
        return self.lam + self.kp * (self.c_ema or 0.0)

    def penalty(self, expected_k_mean: Any, num_tokens: int, t_max: int, step: int) -> tuple[Any, Any]:
        """(λ_eff·c + μ/2·c², c) for the batch-mean differentiable E[K] (a tensor) at `step`."""
        c = expected_k_mean / num_tokens - self.target_tokens(step, t_max) / num_tokens
        return self.lam_effective * c + 0.5 * self.mu * c * c, c

    def update(self, k_mean: float, num_tokens: int, t_max: int, step: int) -> float:
        """One dual-ascent step from the batch's mean hard K at `step`; returns the new λ."""
        if self.active:
            c = (k_mean - self.target_tokens(step, t_max)) / num_tokens
            self.c_ema = c if self.c_ema is None else self.smoothing * self.c_ema + (1 - self.smoothing) * c
            if self.actuator == "stop_offset":  # the integral acts on the STOP offset; λ keeps lam_init
                self.stop_offset += self.eta_offset * c * num_tokens
                return self.lam
            self.lam += self.eta * c
            if self.lam_max is not None:
                self.lam = min(max(self.lam, -self.lam_max), self.lam_max)
        return self.lam

    def _check_target(self, module: L.LightningModule) -> None:
        t_max = getattr(getattr(module, "selector", None), "t_max", None)
        if self.target_k is not None and t_max is not None and self.target_k > t_max:
            raise ValueError(
                f"target_k {self.target_k} is above the selector's t_max {t_max}: K can never reach it; "
                f"raise --model.t_max or lower --budget.target_k"
            )

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._check_target(module)
        # `>`, not `!=`: a checkpoint written without this callback's state (steps 0) still resumes, from lam_init
        if self.steps > trainer.global_step:
            raise RuntimeError(
                f"BudgetController has applied {self.steps} steps but the trainer is at step {trainer.global_step}: "
                "the checkpoint and the callback state disagree"
            )
        module.budget_controller = self if self.active else None
        self._apply_offset(module)

    def _apply_offset(self, module: L.LightningModule) -> None:
        """The STOP offset into the selector the module trains and validates (a resume restores it here)."""
        selector = getattr(module, "selector", None)
        if self.active and self.actuator == "stop_offset" and selector is not None:
            selector.set_stop_offset(self.stop_offset)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        stats = getattr(module, "last_k_stats", None)  # (mean hard K over all ranks, N, T_max, the step it used)
        if not self.active or stats is None:
            return
        k_mean, num_tokens, t_max, step = stats
        self.update(k_mean, num_tokens, t_max, step)
        self.steps = trainer.global_step
        self._apply_offset(module)
        module.log_dict(
            {
                "budget/stop_offset": self.stop_offset,
                "budget/lam": self.lam,
                "budget/lam_effective": self.lam_effective,
                "budget/target_k": self.target_tokens(step, t_max),
            },
            batch_size=1,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "lam": self.lam,
            "steps": self.steps,
            "target_k": self.target_k,
            "c_ema": self.c_ema,
            "actuator": self.actuator,
            "stop_offset": self.stop_offset,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "lam" not in state_dict:
            raise ValueError(
                "this checkpoint holds the state of the earlier PI budget controller (a λ multiplier), not of the "
                "dual-ascent controller: start a new run (move the checkpoint directory away)"
            )
        if state_dict.get("target_k") != self.target_k:
            raise ValueError(
                f"this checkpoint was trained towards target_k {state_dict.get('target_k')}, not {self.target_k}: "
                "resume with the same --budget.target_k, or start a new run"
            )
        saved_actuator = state_dict.get("actuator", "lambda")  # checkpoints before the offset actuator: λ
        if saved_actuator != self.actuator:
            raise ValueError(
                f"this checkpoint was trained with the {saved_actuator!r} actuator, not {self.actuator!r}: resume "
                "with the same --budget.actuator, or start a new run"
            )
        self.lam, self.steps = float(state_dict["lam"]), int(state_dict["steps"])
        self.stop_offset = float(state_dict.get("stop_offset", 0.0))
        self.c_ema = state_dict.get("c_ema")  # absent in checkpoints from before the proportional term: None
