"""The backbone is frozen; the registry, CLI and `from_pretrained` behave as documented."""

from __future__ import annotations

import torch

from steprune import PRUNERS, PrunedVLM
from steprune.cli import main
from tests.inputs import make_inputs


def test_backbone_is_frozen_and_no_grad_flows(llava):
    model, processor = llava
    vlm = PrunedVLM(model, processor, method="uniform", budget=4)
    assert [n for n, p in vlm.model.named_parameters() if p.requires_grad] == []
    out = vlm(**make_inputs(processor))
    assert not out.logits.requires_grad


def test_floor_methods_are_registered():
    assert {"identity", "random", "uniform", "pool"} <= set(PRUNERS.names())


def test_random_is_seeded(llava):
    model, processor = llava
    inputs = make_inputs(processor)
    a = PrunedVLM(model, processor, method="random", budget=5, seed=1)(**inputs).result.keep
    b = PrunedVLM(model, processor, method="random", budget=5, seed=1)(**inputs).result.keep
    c = PrunedVLM(model, processor, method="random", budget=5, seed=2)(**inputs).result.keep
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_from_pretrained_round_trip(llava, tmp_path):
    model, processor = llava
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    vlm = PrunedVLM.from_pretrained(str(tmp_path), method="uniform", budget=4, dtype=torch.float32)
    inputs = make_inputs(processor)
    ours = vlm(**inputs).logits
    again = PrunedVLM(model, processor, method="uniform", budget=4)(**inputs).logits
    torch.testing.assert_close(ours, again)


def test_cli_help_and_methods(capsys):
    assert main([]) == 0
    assert "usage: steprune" in capsys.readouterr().out
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "uniform" in out and "identity" in out


def test_cli_delegates_eval_and_bench_help(capsys):
    import pytest

    for command in ("eval", "bench", "base", "sweep", "ablate"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert f"{command}" in capsys.readouterr().out
