"""The floor on K (`min_k`: STOP masked until then) and the STOP offset (calibration's knob) of the pointer loop."""

from __future__ import annotations

import pytest
import torch

from steprune import PrunedVLM
from steprune.selector.selector import StepPruneSelector
from tests.inputs import make_inputs
from tests.selector.test_pointer import D, micro_decoder, oracle_decoder


def stopping_at_once() -> tuple:
    """An oracle decoder whose STOP beats every token at step 1 (K = 0 without a floor), and its inputs."""
    torch.manual_seed(3)
    q_star = torch.randn(D)
    return oracle_decoder(q_star, 50 * q_star), torch.randn(3, 12, D)


def test_min_k_masks_stop_until_that_many_tokens_are_chosen():
    dec, h = stopping_at_once()
    assert dec(h, t_max=8).lengths.tolist() == [0, 0, 0]
    for floor in (1, 3):
        out = dec(h, t_max=8, min_k=floor)
        assert out.lengths.tolist() == [floor] * 3, "STOP wins as soon as it is allowed"
        assert float(out.pi[:, :floor, -1].abs().max()) == 0.0 and float(out.pi[:, floor, -1].min()) > 0.5
    with pytest.raises(ValueError, match="min_k"):
        dec(h, t_max=4, min_k=5)


def test_floor_zero_and_offset_zero_leave_the_loop_bit_for_bit():
    torch.manual_seed(4)
    h = torch.randn(2, 10, D)
    dec = micro_decoder(seed=2)
    plain, explicit = dec(h, t_max=6), dec(h, t_max=6, min_k=0, stop_offset=0.0)
    assert torch.equal(plain.pi, explicit.pi) and torch.equal(plain.actions, explicit.actions)


def test_mean_k_is_non_increasing_in_the_stop_offset():
    torch.manual_seed(5)
    h = torch.randn(6, 16, D)
    dec = micro_decoder(seed=1)
    ks = [float(dec(h, t_max=16, stop_offset=delta).lengths.float().mean()) for delta in (-6, -2, 0, 2, 6)]
    assert ks == sorted(ks, reverse=True) and ks[0] > ks[-1], ks
    base, later = dec(h, t_max=16), dec(h, t_max=16, stop_offset=3.0)
    for b in range(6):  # a larger offset only ends an episode earlier: the visual choices are a prefix
        k = int(later.lengths[b])
        assert later.chosen[b, :k].tolist() == base.chosen[b, :k].tolist()


def test_the_pruner_never_keeps_fewer_than_min_k(llava, tmp_path):
    model, processor = llava
    torch.manual_seed(0)
    d_vision = PrunedVLM(model, processor).prepare(**make_inputs(processor)).context.vision_features.shape[-1]
    d_text = model.config.get_text_config().hidden_size
    selector = StepPruneSelector(d_vision, d_text, encoder_heads=2, decoder_heads=2, denoiser_heads=2, min_k=0)
    selector.set_stop_offset(1e4)  # a STOP that always wins at once: K = 0 without the floor
    path = tmp_path / "stop_at_once.safetensors"
    selector.save(path)
    inputs = make_inputs(processor)
    zero = PrunedVLM(model, processor, method="steprune", weights=str(path)).prepare(**inputs).result.lengths
    floor = PrunedVLM(model, processor, method="steprune", weights=str(path), min_k=2).prepare(**inputs).result.lengths
    assert zero.tolist() == [0, 0] and floor.tolist() == [2, 2]
    assert StepPruneSelector(8, 8, encoder_heads=2, decoder_heads=2, denoiser_heads=2).min_k == 1  # the default
    with pytest.raises(ValueError, match="min_k"):
        PrunedVLM(model, processor, method="steprune", weights=str(path), min_k=-1)


def test_offset_and_calibration_record_survive_save_and_load(tmp_path):
    selector = StepPruneSelector(8, 8, encoder_heads=2, decoder_heads=2, denoiser_heads=2)
    selector.set_stop_offset(1.25, {"target_k": 16.0, "mean_k": 16.1})
    selector.save(tmp_path / "s.safetensors")
    loaded = StepPruneSelector.load(tmp_path / "s.safetensors")
    assert loaded.stop_offset == 1.25 and loaded.calibration == {"target_k": 16.0, "mean_k": 16.1}
