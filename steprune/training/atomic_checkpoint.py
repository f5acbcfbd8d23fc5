"""`AtomicCheckpointIO`: Lightning checkpoints written atomically next to their final path (a CheckpointIO plugin).

    Trainer(plugins=[AtomicCheckpointIO()], callbacks=[ModelCheckpoint(dirpath="checkpoints", save_last=True)])
    steprune train fit ...        # the CLI's default `trainer.plugins`

Lightning's own `TorchCheckpointIO` stages a local checkpoint in `$TMPDIR` and moves it into place; when
`$TMPDIR` is another filesystem the move is a copy that truncates the old file first, so a full disk while
overwriting `last.ckpt` leaves a truncated file and `--ckpt_path last` cannot resume. Here the checkpoint is
serialised into a temporary file in the checkpoint's own directory, fsynced and renamed over the target
(`steprune.atomic_file`): a failed write raises an OSError that says the previous checkpoint is intact, and
that one still resumes. Remote paths (s3://, gs://, ...) keep Lightning's behaviour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from steprune.atomic_file import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local saves are atomic (temp file in the same directory, fsync, rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)  # Lightning's errors and remote writers
            return
        atomic_write(path, lambda handle: torch.save(checkpoint, handle), what="checkpoint")
