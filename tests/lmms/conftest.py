"""lmms-eval tests: `require_lmms_eval()` skips without lmms-eval in the default venv, and fails instead under
`make test-lmms` (STEPRUNE_REQUIRE_LMMS=1), so that target never passes on skipped tests."""

from __future__ import annotations

import importlib
import os

import pytest


def require_lmms_eval():
    """lmms_eval, or a skip (default venv) / an ImportError (`make test-lmms`)."""
    if os.environ.get("STEPRUNE_REQUIRE_LMMS") == "1":
        return importlib.import_module("lmms_eval")
    return pytest.importorskip("lmms_eval", reason="lmms-eval is not installed: `make test-lmms` runs these")


@pytest.fixture(scope="session")
def lmms_eval():
    return require_lmms_eval()


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A tiny random LLaVA (2 text layers) saved like a real checkpoint."""
    from tests.inputs import write_micro_base

    return write_micro_base(tmp_path_factory.mktemp("lmms") / "tiny-llava")
