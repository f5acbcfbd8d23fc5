"""The inference pointer loop (`FastPointerLoop`) picks exactly what the eager loop (`PointerDecoder.forward`) picks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from steprune.selector.fast_pointer import FastPointerLoop
from steprune.selector.pointer import PointerDecoder
from steprune.selector.selector import StepPruneSelector, spatial_order

CASES = [  # (d_model, layers, heads, stop scale: 0 = STOP rarely wins, large = samples stop early)
    (32, 2, 4, 1.0),
    (64, 2, 8, 60.0),
    (48, 1, 2, 30.0),
    (16, 3, 1, 0.0),
]


def decoder(seed: int, d: int, layers: int, heads: int, stop_scale: float) -> PointerDecoder:
    torch.manual_seed(seed)
    dec = PointerDecoder(d, num_layers=layers, num_heads=heads).eval()
    with torch.no_grad():
        dec.stop.mul_(stop_scale)
    return dec


def assert_same_picks(dec: PointerDecoder, h: torch.Tensor, loop: FastPointerLoop, t_max: int, **kw) -> None:
    with torch.no_grad():
        ref = dec(h, t_max, kw.get("tau", 1.0), min_k=kw.get("min_k", 0), stop_offset=kw.get("stop_offset", 0.0))
    for early_exit in (True, False):
        out = loop(h, t_max, early_exit=early_exit, **kw)
        assert torch.equal(out.chosen, ref.chosen), (kw, early_exit)
        assert torch.equal(out.chosen_mask, ref.chosen_mask), (kw, early_exit)
        assert torch.equal(out.lengths, ref.lengths), (kw, early_exit)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_fast_loop_picks_exactly_what_the_eager_loop_picks(case, static):
    d, layers, heads, stop_scale = CASES[case]
    dec = decoder(case, d, layers, heads, stop_scale)
    h = torch.randn(5, 40, d, generator=torch.Generator().manual_seed(case))
    loop = FastPointerLoop(dec, static=static)
    for kw in ({}, {"min_k": 4}, {"stop_offset": -3.0, "min_k": 1}, {"stop_offset": 2.0}, {"tau": 0.3}):
        assert_same_picks(dec, h, loop, 25, **kw)
    assert_same_picks(dec, h, loop, 40)  # T_max = N: every token may be chosen
    assert_same_picks(dec, h[:1], loop, 1)


def test_feedback_is_the_eager_straight_through_einsum_bit_for_bit():
    """e = y_j * M_j with y_j = (1 + pi_j) - pi_j: the value of einsum(onehot + pi - pi.detach(), M), every bit."""
    g = torch.Generator().manual_seed(0)
    b, n, d = 6, 30, 24
    memory = torch.randn(b, n + 1, d, generator=g)
    logits = 3 * torch.randn(b, n + 1, generator=g)
    log_mask = torch.zeros(b, n + 1)
    done = torch.tensor([False, True, False, False, True, False])
    e, action, mask, now_done = FastPointerLoop._feedback(logits, memory, log_mask, done, tau=0.7)
    pi = torch.softmax(logits / 0.7, dim=-1)
    eager_action = torch.where(done, n, logits.argmax(dim=-1))
    onehot = F.one_hot(eager_action, n + 1).to(pi.dtype)
    assert torch.equal(e, torch.einsum("bm,bmd->bd", onehot + pi - pi.detach(), memory))
    assert torch.equal(action, eager_action)
    assert torch.equal(mask, log_mask.masked_fill(onehot.bool() & (eager_action < n)[:, None], float("-inf")))
    assert torch.equal(now_done, done | (eager_action == n))


def test_selector_select_is_the_eager_selection():
    """`StepPruneSelector.select` (which runs the fast loop) == the eager pointer's picks in spatial order."""
    torch.manual_seed(3)
    sel = StepPruneSelector(d_vision=24, d_text=16, d_model=32, encoder_heads=4, decoder_heads=4, t_max=12).eval()
    with torch.no_grad():
        sel.decoder.stop.mul_(40.0)  # adaptive K: samples stop at different steps
    g = torch.Generator().manual_seed(4)
    vision, text = torch.randn(4, 30, 24, generator=g), torch.randn(4, 7, 16, generator=g)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[0, :3] = False
    for kw in ({}, {"min_k": 3, "stop_offset": -1.0}, {"t_max": 30, "min_k": 0}):
        got = sel.select(vision, text, mask, **kw)
        offset = kw.get("stop_offset", sel.stop_offset)
        with torch.no_grad():
            out = sel.pointer(vision, text, mask, 1.0, 1.0, kw.get("t_max"), stop_offset=offset, min_k=kw.get("min_k"))
        want = spatial_order(out.chosen, out.chosen_mask, 30)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), kw


def test_compiled_loop_plumbing_with_eager_kernels():
    """torch.compile of the static step (backend aot_eager: graph capture, eager kernels) picks what eager picks."""
    dec = decoder(1, 32, 2, 4, 30.0)
    h = torch.randn(3, 20, 32, generator=torch.Generator().manual_seed(1))
    assert_same_picks(dec, h, FastPointerLoop(dec, compile="aot_eager"), 12, min_k=1)


@pytest.mark.slow
def test_inductor_compiled_loop_picks_what_the_eager_loop_picks():
    """torch.compile with inductor (C++ kernels generated on this CPU): the same picks on random decoders."""
    for case in (0, 1):
        d, layers, heads, stop_scale = CASES[case]
        dec = decoder(case, d, layers, heads, stop_scale)
        h = torch.randn(4, 40, d, generator=torch.Generator().manual_seed(case))
        assert_same_picks(dec, h, FastPointerLoop(dec, compile="inductor"), 25, min_k=1)


def test_loop_arguments_are_checked():
    dec = decoder(0, 16, 1, 2, 1.0)
    h = torch.randn(1, 5, 16)
    with pytest.raises(ValueError, match="t_max"):
        FastPointerLoop(dec)(h, 6)
    with pytest.raises(ValueError, match="min_k"):
        FastPointerLoop(dec)(h, 3, min_k=4)
    with pytest.raises(ValueError, match="CUDA"):
        FastPointerLoop(dec).cuda_graph(1, 5, 3)
