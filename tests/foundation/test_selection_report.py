"""`PrunedVLM.selection_report`: the stages and selection FLOPs of `__call__`, with the LLM run only when needed."""

from __future__ import annotations

import pytest
import torch

from steprune import PRUNERS, PrunedVLM
from steprune.backbones.tiny import tiny_llava
from tests.inputs import make_inputs


@pytest.fixture(scope="module")
def deep():
    """Tiny LLaVA with 4 decoder layers (room for in-LLM drops) and N = 16 visual tokens."""
    return tiny_llava(text_layers=4)


@pytest.mark.parametrize("method", PRUNERS.names())
def test_selection_report_matches_the_forward(deep, method):
    model, processor = deep
    inputs = make_inputs(processor, seed=3)
    extra = {"allow_random": True, "t_max": 6} if method == "steprune" else {}
    vlm = PrunedVLM(model, processor, method=method, budget=6, **extra)
    llm_runs = []
    handle = vlm.adapter.decoder.register_forward_hook(lambda *_: llm_runs.append(1))
    try:
        report = vlm.selection_report(**inputs)
    finally:
        handle.remove()
    out = vlm(**inputs)
    assert report.visual_tokens_per_stage == out.visual_tokens_per_stage
    assert report.selection_flops == out.selection_flops
    assert torch.equal(report.result.keep, out.result.keep) and torch.equal(
        report.result.keep_mask, out.result.keep_mask
    )
    in_llm = len(out.visual_tokens_per_stage) > 1
    assert len(llm_runs) == int(in_llm), "only an in-LLM method needs the LLM to report its selection"
