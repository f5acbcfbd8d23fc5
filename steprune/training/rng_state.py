"""`RNGCheckpoint`: the process's random number generators saved in every checkpoint, restored on resume.

    Trainer(callbacks=[RNGCheckpoint()])       # StepPruneModule.configure_callbacks adds it to every trainer

Lightning checkpoints the weights, optimiser, schedulers, loops and callback states, but not the global RNGs:
a resumed run is re-seeded by `seed_everything` and its training noise (the VP noise gate, dropout, sampled
pointer actions) diverges from the uninterrupted run from the first step on. This callback stores torch's CPU
(and every CUDA device's) generator, NumPy's legacy global generator and Python's `random` as plain tensors and
lists (loadable with `weights_only=True`), and puts them back right before the first training batch after the
resume, so whatever ran in between (building the dataloaders, a sanity check) cannot consume them. The
module's own generators and the data position are checkpointed by their owners (`StepPruneModule`,
the datamodules' `start` at the restored step).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


def collect_rng_states() -> dict[str, Any]:
    """The global generators' states, as tensors / lists / numbers only."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back what `collect_rng_states` returned."""
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    python = states["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        if len(states["cuda"]) != torch.cuda.device_count():
            raise ValueError(
                f"the checkpoint holds the RNG states of {len(states['cuda'])} CUDA devices, this process sees "
                f"{torch.cuda.device_count()}: resume on as many devices (CUDA_VISIBLE_DEVICES) for an exact resume"
            )
        torch.cuda.set_rng_state_all(states["cuda"])


class RNGCheckpoint(L.Callback):
    """Saves the global RNG states with each checkpoint; restores them before the first batch after a resume."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return collect_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not {"torch", "numpy", "python"} <= set(state_dict):
            raise ValueError(
                f"the checkpoint's RNG state has keys {sorted(state_dict)}, expected torch, numpy and python: "
                "it was not written by RNGCheckpoint; resume from a checkpoint of this version or start afresh"
            )
        self._pending = state_dict

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            restore_rng_states(self._pending)
            self._pending = None
