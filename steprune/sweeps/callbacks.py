"""Lightning callbacks a sweep adds to each trial's trainer: Optuna pruning and the validation K values.

    Trainer(callbacks=[OptunaPruning(trial, "val/retention"), ValidationK()])

`OptunaPruning` reports the monitored `val/` metric to the trial after every validation (step = the
trainer's global step) and, when the study's pruner says so, stops training cleanly (`should_stop`) and
remembers it; the runner then tells Optuna the trial was PRUNED. Stopping instead of raising inside the
hook lets Lightning finish the MLflow run normally. Single-objective studies only (an Optuna limit).
"""

from __future__ import annotations

from typing import Any

import lightning as L


class OptunaPruning(L.Callback):
    """Report `monitor` to an Optuna trial at each validation and stop the run when the pruner says so."""

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor
        self.pruned = False
        self.reports = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(f"{self.monitor!r} is not logged at validation; logged: {sorted(trainer.callback_metrics)}")
        self.trial.report(float(value), step=trainer.global_step)
        self.reports += 1
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


class ValidationK(L.Callback):
    """Keeps the per-sample K of the latest validation (the module's `val_ks`, read before it is reset)."""

    def __init__(self) -> None:
        self.ks: list[int] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metric = getattr(pl_module, "val_ks", None)
        if trainer.sanity_checking or metric is None or not metric.update_count:
            return
        self.ks = [int(k) for k in metric.compute().flatten().tolist()]
