"""What produced an artefact: the git commit and the versions of the packages that can change its numbers.

Recorded in the base's `build_info.json` (and any report that wants it), so that "deterministic" names the
environment it holds in: `requirements.lock` pins the set `make install` uses.

    python -m steprune.training.provenance     # prints the record for this checkout and venv
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES: tuple[str, ...] = (
    "torch",
    "transformers",
    "tokenizers",
    "lightning",
    "numpy",
    "pillow",
    "safetensors",
    "huggingface_hub",
    "jsonargparse",
)
"""The packages whose version can change a build's numbers (compute, tokenisation, rendering, RNG)."""


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(root: Path | None = None) -> dict[str, Any]:
    """HEAD of the checkout holding this package, and whether tracked files differ from it (None outside git)."""
    root = root or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def provenance() -> dict[str, Any]:
    """The record: commit, Python, platform and package versions."""
    return {
        **git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
    }


if __name__ == "__main__":
    print(json.dumps(provenance(), indent=2))
