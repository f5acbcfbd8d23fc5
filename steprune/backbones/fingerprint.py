"""A cheap identity of a backbone checkpoint, so that a selector trained on one base is never resumed on another.

    backbone_fingerprint("artifacts/base")                # local dir: config, build info, samples of the weights
    backbone_fingerprint("llava-hf/llava-1.5-7b-hf")      # hub id: the id and the resolved revision, if known

A rebuilt base keeps its path but changes its weights (and its `build_info.json`), so the fingerprint changes.
Reading at most 2 MiB per weight file keeps this instant for a 7B checkpoint too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SAMPLE_BYTES = 1 << 20
"""Bytes hashed from the start and from the end of every weight file."""


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
