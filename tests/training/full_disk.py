"""Run inside a private mount namespace by test_atomic_checkpoint: `steprune train fit` onto a tiny tmpfs that fills up.

    unshare --user --map-root-user --mount python -m tests.training.full_disk <root> <tmpfs size>

Mounts a tmpfs of that size on <root>/checkpoints, trains one step (last.ckpt at step 1), then `FillDiskAt` fills
the tmpfs just before the step-2 save (and makes that checkpoint larger than the first, as optimiser state or a
growing history would), so overwriting last.ckpt meets a full disk. Then the disk is freed and the same command
resumes with `--ckpt_path last`. Prints one JSON line with what happened.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch


class FillDiskAt(L.Callback):
    """At the end of step `step`, before the checkpoint is written, fill the filesystem of `filler` to the last byte."""

    def __init__(self, filler: str, step: int, ballast: int = 1 << 18) -> None:
        self.filler, self.step, self.ballast = Path(filler), step, ballast

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            chunk = b"\0" * 4096
            with contextlib.suppress(OSError), self.filler.open("wb", buffering=0) as handle:
                while True:
                    handle.write(chunk)

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.global_step >= self.step:
            checkpoint["ballast"] = torch.zeros(self.ballast, dtype=torch.uint8)


def fit_args(root: Path, steps: int, extra: list[dict[str, Any]]) -> list[str]:
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "dirpath": str(root / "checkpoints"),
            "save_last": True,
            "save_top_k": 0,
            "every_n_train_steps": 1,
        },
    }
    return [
        "fit",
        f"--model.backbone={root / 'base'}",
        "--model.t_max=4",
        "--model.warmup_steps=1",
        "--data=steprune.data.instruct_datamodule.InstructDataModule",
        f"--data.train_source={root / 'data.json'}",
        f"--data.image_folder={root / 'images'}",
        "--data.batch_size=2",
        f"--trainer.logger.init_args.tracking_uri=sqlite:///{root / 'mlruns.db'}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.limit_val_batches=0",
        f"--trainer.max_steps={steps}",
        f"--trainer.callbacks={json.dumps([checkpoint, *extra])}",
        f"--export.path={root / 'selector.safetensors'}",
        "--text_gate.warmup_steps=2",
    ]


def main(root: Path, size: str) -> dict[str, Any]:
    from steprune.training.cli import train_main

    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root / "checkpoints")], check=True)
    last = root / "checkpoints" / "last.ckpt"
    filler = root / "checkpoints" / "filler"
    train_main(fit_args(root, 1, []))
    result: dict[str, Any] = {"first_step": torch.load(last, weights_only=False)["global_step"]}
    fill = {"class_path": "tests.training.full_disk.FillDiskAt", "init_args": {"filler": str(filler), "step": 2}}
    try:
        train_main([*fit_args(root, 2, [fill]), "--ckpt_path=last"])
        result["error"] = None
    except OSError as error:
        result["error"], result["errno"] = str(error), error.errno
    filler.unlink(missing_ok=True)
    result["left"] = sorted(p.name for p in last.parent.iterdir())
    try:
        result["kept_step"] = torch.load(last, weights_only=False)["global_step"]
    except Exception as error:  # a truncated checkpoint
        result["kept_step"] = f"{type(error).__name__}: {error}"
        return result
    train_main([*fit_args(root, 2, []), "--ckpt_path=last"])  # the disk has room again: resume
    result["resumed_step"] = torch.load(last, weights_only=False)["global_step"]
    return result


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]), sys.argv[2])))
