"""Shared fixtures: tiny random LLaVA / Qwen2.5-VL models with real processors."""

from __future__ import annotations

import pytest
import torch

from steprune.backbones.tiny import tiny_llava, tiny_qwen2_5_vl


@pytest.fixture(scope="session")
def llava():
    torch.manual_seed(0)
    return tiny_llava()


@pytest.fixture(scope="session")
def qwen():
    return tiny_qwen2_5_vl()


@pytest.fixture(params=["llava", "qwen"])
def family(request, llava, qwen):
    """(model, processor) of each supported family."""
    return {"llava": llava, "qwen": qwen}[request.param]
