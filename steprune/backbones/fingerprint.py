"""A cheap identity of a backbone checkpoint, so that a selector trained on one base is never resumed on another.

    backbone_fingerprint("artifacts/base")                # local dir: config, build info, samples of the weights
    backbone_fingerprint("llava-hf/llava-1.5-7b-hf")      # hub id: the id and the resolved revision, if known
    model_fingerprint(model)                              # a loaded model's (None when it was built in memory)

A rebuilt base keeps its path but changes its weights (and its `build_info.json`), so the fingerprint changes.
Reading at most 2 MiB per weight file keeps this instant for a 7B checkpoint too. Training checkpoints and
exported selectors record it; resuming or applying either on another base raises `BackboneMismatchError`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

SAMPLE_BYTES = 1 << 20
"""Bytes hashed from the start and from the end of every weight file."""


class BackboneMismatchError(ValueError):
    """A selector (or a training checkpoint) was trained on another backbone than the one loaded now."""


def _weight_sample(path: Path) -> bytes:
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(SAMPLE_BYTES)
        handle.seek(max(size - SAMPLE_BYTES, 0))
        tail = handle.read(SAMPLE_BYTES)
    return f"{path.name}:{size}:".encode() + head + tail


def backbone_fingerprint(backbone: str, revision: str | None = None) -> str:
    """'sha256:<hex>' of what identifies `backbone`'s weights (see the module docstring)."""
    digest = hashlib.sha256()
    root = Path(backbone)
    if root.is_dir():
        for name in ("config.json", "build_info.json"):
            if (root / name).is_file():
                digest.update(name.encode() + (root / name).read_bytes())
        for weights in sorted([*root.glob("*.safetensors"), *root.glob("*.bin")]):
            digest.update(_weight_sample(weights))
    else:
        digest.update(f"hub:{backbone}@{revision or 'unknown'}".encode())
    return "sha256:" + digest.hexdigest()


def model_fingerprint(model: Any) -> str | None:
    """The fingerprint of the checkpoint a loaded Hugging Face model came from (its `name_or_path` and the
    revision it resolved), or None for a model built in memory (no local directory or hub id to identify)."""
    config = getattr(model, "config", None)
    name = str(getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or "")
    if not name:
        return None
    return backbone_fingerprint(name, getattr(config, "_commit_hash", None))
