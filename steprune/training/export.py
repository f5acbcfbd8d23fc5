"""Callback that writes the trained selector as a standalone safetensors file (what `steprune` pruner loads).

    Trainer(callbacks=[ExportSelector("artifacts/selector.safetensors")])
    Trainer(callbacks=[ExportSelector("selector.safetensors", calibrate_to=16)])  # exact mean K on the val split
    PrunedVLM.from_pretrained(base, method="steprune", weights="artifacts/selector.safetensors")

With `calibrate_to` (the CLI links it to `--budget.target_k`), the end of fit bisects the STOP-logit offset on
the validation batches until their mean greedy K is K* (`steprune.training.calibration`), and the file carries
the offset in its config and the calibration record in its metadata. Every export also records the base it
was trained on (the backbone's name and fingerprint): the `steprune` pruner refuses it on another base.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from steprune.training.calibration import calibrate_stop_offset, encode_split


class ExportSelector(L.Callback):
    """Saves `module.selector` at the end of fit (and after each validation, so a crash keeps the last)."""

    def __init__(self, path: str = "artifacts/selector.safetensors", calibrate_to: float | None = None) -> None:
        if calibrate_to is not None and calibrate_to <= 0:
            raise ValueError(f"calibrate_to must be > 0 (a mean number of visual tokens), got {calibrate_to}")
        self.path = path
        self.calibrate_to = calibrate_to
        self.calibration: dict | None = None

    def _export(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            backbone = str(module.hparams.backbone)
            module.selector.trained_on = {"backbone": backbone, "fingerprint": module.backbone_fingerprint}
            module.selector.save(self.path)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._export(trainer, module)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.calibrate_to is not None:
            loaders = trainer.val_dataloaders
            if loaders is None and trainer.datamodule is not None:
                loaders = trainer.datamodule.val_dataloader()
            if loaders is None:
                raise ValueError(
                    "calibrate_to needs validation data (the calibration split): give the fit a val loader"
                )
            loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
            self.calibration = calibrate_stop_offset(module.selector, encode_split(module, loader), self.calibrate_to)
            module.print(f"calibrated STOP offset: {self.calibration}")
        self._export(trainer, module)
