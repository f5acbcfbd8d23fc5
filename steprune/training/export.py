"""Callback that writes the trained selector as a standalone safetensors file (what `steprune` pruner loads).

Trainer(callbacks=[ExportSelector("artifacts/selector.safetensors")])
PrunedVLM.from_pretrained(base, method="steprune", weights="artifacts/selector.safetensors")
"""

from __future__ import annotations

from pathlib import Path

import lightning as L


class ExportSelector(L.Callback):
    """Saves `module.selector` at the end of fit (and after each validation, so a crash keeps the last)."""

    def __init__(self, path: str = "artifacts/selector.safetensors") -> None:
        self.path = path

    def _export(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            module.selector.save(self.path)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._export(trainer, module)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._export(trainer, module)
