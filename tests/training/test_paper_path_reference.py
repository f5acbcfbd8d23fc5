"""`surrogate: paper` with `min_k: 0` trains the selector that `experiments/stepprune_world.yaml` trained at 592d5dd.

The reference digest was written by the code of 592d5dd (before #18's removal surrogate, controller and floor; how:
`tests/training/paper_path_digest.py`). On the platform that wrote it (same torch build and CPU kernels) the selector
must match bit for bit; elsewhere every tensor's sum, norm and random projection within a tolerance far below what
any change of the path gives (a changed update moves every element by ~lr = 1e-3 after 6 Adam steps).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.training.paper_path_digest import STEPS, platform_key, reference_fit

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "data" / "paper_path_592d5dd.json"


@pytest.fixture(scope="module")
def head_digest(tmp_path_factory):
    return reference_fit(str(ROOT / "experiments" / "stepprune_world.yaml"), tmp_path_factory.mktemp("paper_path"))


def test_the_paper_path_trains_the_selector_it_trained_before_the_removal_surrogate(head_digest):
    reference = json.loads(REFERENCE.read_text())
    assert set(head_digest["tensors"]) == set(reference["tensors"]), "the selector's parameters changed"
    far = []
    for name, ref in reference["tensors"].items():
        got = head_digest["tensors"][name]
        scale = 1e-5 * math.sqrt(ref["numel"])  # the projection of a (numel,) change of 1e-5 per element
        for key in ("sum", "norm", "projection"):
            if abs(got[key] - ref[key]) > scale + 1e-6 * abs(ref[key]):
                far.append(f"{name}.{key}: {got[key]:.8g} vs {ref[key]:.8g}")
    assert not far, f"{len(far)} digests moved, e.g. {far[:3]}"
    if platform_key() == reference["platform"]:
        assert head_digest["sha256"] == reference["sha256"], "same platform, so bit for bit"


def test_the_digest_sees_a_one_step_change(head_digest, tmp_path):
    """The comparison above can fail: a fit of 5 steps instead of 6 moves the digests far outside the tolerance."""
    shorter = reference_fit(str(ROOT / "experiments" / "stepprune_world.yaml"), tmp_path, steps=STEPS - 1)
    moved = [
        name
        for name, ref in head_digest["tensors"].items()
        if abs(shorter["tensors"][name]["projection"] - ref["projection"]) > 1e-5 * math.sqrt(ref["numel"])
    ]
    assert len(moved) > len(head_digest["tensors"]) // 2
