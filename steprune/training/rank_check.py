"""Callback that proves the DDP ranks stayed in step: same selector weights and training state on every rank.

    steprune train fit ... --trainer.strategy ddp --trainer.devices 2 \\
        --trainer.callbacks+=steprune.training.rank_check.RankConsistencyCheck

At the end of training each rank hashes its selector's weights (SHA-256 of the float64 bytes of every tensor, in
state-dict order) and its stateful training values (k̄, the budget controller's λ and steps); the ranks
all-gather the hashes and the check raises `RankDivergenceError` naming the ranks that differ. With `report_dir`
each rank also writes `rank<r>.json` with what it hashed (for tests and post-mortems). In one process it passes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch


class RankDivergenceError(RuntimeError):
    """Two DDP ranks ended training with different selector weights or training state."""


def state_digest(module: L.LightningModule) -> dict[str, Any]:
    """What must agree across ranks: the selector weights' hash, k̄, and the budget controller's state."""
    weights = hashlib.sha256()
    for name, tensor in module.selector.state_dict().items():
        weights.update(name.encode())
        weights.update(tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    controller = getattr(module, "budget_controller", None)
    return {
        "selector_sha256": weights.hexdigest(),
        "k_bar": float(module.k_bar),
        "budget": None if controller is None else controller.state_dict(),
    }


class RankConsistencyCheck(L.Callback):
    """At train end: all-gather each rank's `state_digest` hash and raise if any rank differs."""

    def __init__(self, report_dir: str | None = None) -> None:
        self.report_dir = report_dir

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        digest = state_digest(module)
        blob = hashlib.sha256(json.dumps(digest, sort_keys=True).encode()).digest()
        if self.report_dir is not None:
            Path(self.report_dir).mkdir(parents=True, exist_ok=True)
            path = Path(self.report_dir) / f"rank{trainer.global_rank}.json"
            path.write_text(json.dumps({"rank": trainer.global_rank, "world_size": trainer.world_size, **digest}))
        mine = torch.tensor(list(blob), dtype=torch.int64, device=module.device)  # (32,)
        gathered = trainer.strategy.all_gather(mine)  # (world, 32), or (32,) in one process
        rows = gathered.view(-1, mine.numel())
        differing = [rank for rank in range(rows.shape[0]) if not torch.equal(rows[rank], rows[0])]
        if differing:
            raise RankDivergenceError(
                f"ranks {differing} ended training with other selector weights or state than rank 0: a rank-local "
                "value (a running mean, a controller) was not reduced across ranks"
            )
