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


PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The directory holding the `steprune` package: its git checkout in an editable install."""


def git_commit(root: Path | None = None) -> dict[str, Any]:
    """HEAD of the checkout holding this package (not of the working directory), and whether tracked files differ
    from it; None when `root` is not the top of a git checkout (outside git, or a package installed into a
    site-packages that happens to sit inside some other repository)."""
    root = (root or PACKAGE_ROOT).resolve()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:
            return {"commit": None, "dirty": None}
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def commit_label(root: Path | None = None) -> str:
    """The package's commit as one string for tags: `<sha>`, `<sha>-dirty` (tracked files changed), or `unknown`."""
    record = git_commit(root)
    if record["commit"] is None:
        return "unknown"
    return record["commit"] + ("-dirty" if record["dirty"] else "")


def cpu_record() -> dict[str, Any]:
    """The CPU facts that change float results bit for bit: the kernels torch dispatches to and the threads.

    Measured (session 9, a 20 + 20-step micro build): the same lock on the same machine gives different weights
    with `ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2` (AVX2 kernels instead of AVX-512) and with one
    thread instead of two; transformers 5.23/5.24, lightning 2.5.6/2.6.6, pillow 12.3/13.0, numpy 2.3.5/2.4.6,
    tokenizers 0.23.1/0.23.3 and huggingface_hub 1.33/2.4 did not change a byte.
    """
    import torch

    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")), None)
    return {"model": model, "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def provenance() -> dict[str, Any]:
    """The record: commit, Python, platform, CPU and package versions."""
    return {
        **git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_record(),
        "packages": package_versions(),
    }


if __name__ == "__main__":
    print(json.dumps(provenance(), indent=2))
