"""Stateful schedule callbacks: the text gate α (0 → 1 over a warm-up) and the pointer temperature τ.

    Trainer(callbacks=[TextGateSchedule(warmup_steps=100), TemperatureSchedule(start=2.0, end=0.5, steps=400)])

Each callback counts the optimisation steps it has applied and keeps the count in its `state_dict`, so
resuming from a checkpoint continues the schedule exactly where it stopped (checked against the trainer's
own step on resume). The current values are set on the module (`module.alpha`, `module.tau`) and logged.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L


class _StepSchedule(L.Callback):
    """A value that is a function of the number of optimisation steps taken."""

    attribute: str = ""

    def __init__(self) -> None:
        self.steps = 0

    def value(self, step: int) -> float:
        raise NotImplementedError

    def _apply(self, module: L.LightningModule) -> None:
        setattr(module, self.attribute, self.value(self.steps))

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.steps != trainer.global_step:
            raise RuntimeError(
                f"{type(self).__name__} has applied {self.steps} steps but the trainer is at step "
                f"{trainer.global_step}: the checkpoint and the callback state disagree"
            )
        self._apply(module)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        self.steps = trainer.global_step
        self._apply(module)
        module.log(f"schedule/{self.attribute}", float(getattr(module, self.attribute)))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = int(state_dict["steps"])


class _LinearWarmup(_StepSchedule):
    """min(1, step / warmup_steps), 1 from the start when warmup_steps = 0."""

    def __init__(self, warmup_steps: int) -> None:
        super().__init__()
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = warmup_steps

    def value(self, step: int) -> float:
        return 1.0 if self.warmup_steps == 0 else min(1.0, step / self.warmup_steps)


class TextGateSchedule(_LinearWarmup):
    """α = min(1, step / warmup_steps): the selector reads the prompt gradually (methods.md §1.1)."""

    attribute = "alpha"

    def __init__(self, warmup_steps: int = 100) -> None:
        super().__init__(warmup_steps)


class TemperatureSchedule(_StepSchedule):
    """τ annealed from `start` to `end` over `steps` optimisation steps (cosine by default), then held."""

    attribute = "tau"

    def __init__(self, start: float = 1.0, end: float = 1.0, steps: int = 1000, shape: str = "cosine") -> None:
        super().__init__()
        if start <= 0 or end <= 0:
            raise ValueError("temperatures must be positive")
        if shape not in ("cosine", "linear", "exponential"):
            raise ValueError(f"shape must be cosine, linear or exponential, got {shape!r}")
        self.start, self.end, self.total, self.shape = start, end, max(steps, 1), shape

    def value(self, step: int) -> float:
        f = min(1.0, step / self.total)
        if self.shape == "linear":
            return self.start + (self.end - self.start) * f
        if self.shape == "exponential":
            return self.start * (self.end / self.start) ** f
        return self.end + 0.5 * (self.start - self.end) * (1 + math.cos(math.pi * f))


class LengthPenaltySchedule(_LinearWarmup):
    """Scales λ from 0 to 1 over `warmup_steps`: the selector first learns which tokens matter, then to stop.

    Without it a strong λ can drive K to 0 before the LM loss has said which tokens help (K = 0 is
    absorbing: with k̄ = 0 every token is noise and no gradient prefers one token over another).
    """

    attribute = "lam_scale"

    def __init__(self, warmup_steps: int = 0) -> None:
        super().__init__(warmup_steps)
