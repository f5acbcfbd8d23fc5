"""The provenance record names the checkout's commit, the CPU kernels and the installed package versions."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import torch

from steprune.training.provenance import git_commit, package_versions, provenance


def test_record_names_commit_cpu_and_versions():
    record = provenance()
    assert record["packages"]["torch"] == torch.__version__
    assert record["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    root = Path(__file__).resolve().parents[2]
    inside_git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if inside_git.returncode == 0:
        assert record["commit"] == inside_git.stdout.strip() and re.fullmatch(r"[0-9a-f]{40}", record["commit"])
        assert isinstance(record["dirty"], bool)


def test_outside_git_and_missing_packages_are_none(tmp_path):
    assert git_commit(tmp_path) == {"commit": None, "dirty": None}
    assert package_versions(("no-such-package-steprune",)) == {"no-such-package-steprune": None}
