"""Selector checkpoints: save -> load gives identical selections; corrupt or mismatched files fail clearly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from steprune.selector.selector import FORMAT, StepPruneSelector


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread wake-ups that dominate on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def micro(**kwargs) -> StepPruneSelector:
    torch.manual_seed(0)
    args = dict(d_vision=8, d_text=12, d_model=16, encoder_heads=2, decoder_heads=2, denoiser_heads=2, mlp_ratio=2.0)
    return StepPruneSelector(**(args | kwargs))


def batch():
    gen = torch.Generator().manual_seed(1)
    mask = torch.tensor([[True, True, True], [False, True, True]])
    return torch.randn(2, 10, 8, generator=gen), torch.randn(2, 3, 12, generator=gen), mask


def test_save_load_gives_identical_selections(tmp_path):
    sel = micro(t_max=6, aggregation="alive_only", causal=True)
    path = tmp_path / "selector.safetensors"
    sel.save(path)
    again = StepPruneSelector.load(path)
    assert again.config == sel.config and again.t_max == 6
    for (name, a), b in zip(sel.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert all(p.requires_grad for p in again.parameters()), "a loaded selector is trainable"
    vision, text, mask = batch()
    first, second = sel.select(vision, text, mask), again.select(vision, text, mask)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch.testing.assert_close(
        sel.forward_train(vision, text, mask, k_bar=3.0, generator=gen())["features"],
        again.forward_train(vision, text, mask, k_bar=3.0, generator=gen())["features"],
        rtol=0,
        atol=0,
    )


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no StepPrune selector checkpoint"):
        StepPruneSelector.load(tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all")
    with pytest.raises(ValueError, match=r"garbage\.safetensors is not a readable safetensors file"):
        StepPruneSelector.load(garbage)
    good = tmp_path / "good.safetensors"
    micro().save(good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"truncated\.safetensors is not a readable safetensors file"):
        StepPruneSelector.load(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match=r"foreign\.safetensors is not a StepPrune selector checkpoint"):
        StepPruneSelector.load(foreign)


def rewrite(path, tensors, config) -> None:
    save_file(tensors, str(path), metadata={"format": FORMAT, "config": json.dumps(config)})


def test_mismatched_files_name_the_problem(tmp_path):
    sel = micro()
    path = tmp_path / "selector.safetensors"
    sel.save(path)
    tensors = load_file(str(path))

    wider = tmp_path / "wider.safetensors"
    rewrite(wider, tensors, sel.config | {"d_model": 32})
    with pytest.raises(ValueError, match=r"wider\.safetensors does not match .*shape \(16,\) in the file, \(32,\)"):
        StepPruneSelector.load(wider)

    missing = tmp_path / "missing.safetensors"
    rewrite(missing, {k: v for k, v in tensors.items() if k != "decoder.stop"}, sel.config)
    with pytest.raises(ValueError, match=r"missing\.safetensors does not match .*missing decoder\.stop"):
        StepPruneSelector.load(missing)

    extra = tmp_path / "extra.safetensors"
    rewrite(extra, tensors | {"decoder.bonus": torch.zeros(1)}, sel.config)
    with pytest.raises(ValueError, match=r"unexpected decoder\.bonus"):
        StepPruneSelector.load(extra)

    bad_config = tmp_path / "bad_config.safetensors"
    rewrite(bad_config, tensors, sel.config | {"layers_of_magic": 3})
    with pytest.raises(ValueError, match=r"bad_config\.safetensors: its constructor arguments do not build"):
        StepPruneSelector.load(bad_config)
