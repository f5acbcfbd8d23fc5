"""Cross-modal encoder: bidirectional vs causal attention, the text gate and the text padding mask."""

from __future__ import annotations

import pytest
import torch

from steprune.selector.encoder import CrossModalEncoder


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread wake-ups that dominate on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def encoder(causal: bool) -> CrossModalEncoder:
    torch.manual_seed(0)
    return CrossModalEncoder(d_vision=16, d_text=24, d_model=32, num_layers=2, num_heads=4, causal=causal)


def inputs():
    gen = torch.Generator().manual_seed(1)
    vision, text = torch.randn(2, 6, 16, generator=gen), torch.randn(2, 4, 24, generator=gen)
    mask = torch.tensor([[False, True, True, True], [True, True, True, True]])  # sample 0: one pad
    return vision, text, mask


def changed(a: torch.Tensor, b: torch.Tensor) -> list[bool]:
    """Per image position: does its output differ (beyond rounding)?"""
    return [(a[:, i] - b[:, i]).abs().max().item() > 1e-5 for i in range(a.shape[1])]


@pytest.mark.parametrize("causal", [False, True])
@torch.no_grad()
def test_dependence_on_image_tokens(causal):
    enc, (vision, text, mask) = encoder(causal), inputs()
    base = enc(vision, text, mask, alpha=1.0)
    assert base.shape == (2, 6, 32)
    j = 3
    other = vision.clone()
    other[:, j] += 1.0
    moved = changed(enc(other, text, mask, alpha=1.0), base)
    if causal:  # output i reads positions <= i only
        assert moved == [False, False, False, True, True, True]
    else:
        assert all(moved)


@pytest.mark.parametrize("causal", [False, True])
@torch.no_grad()
def test_dependence_on_text_and_padding(causal):
    enc, (vision, text, mask) = encoder(causal), inputs()
    base = enc(vision, text, mask, alpha=1.0)
    padded = text.clone()
    padded[0, 0] += 5.0  # a padded position: masked out as a key
    torch.testing.assert_close(enc(vision, padded, mask, alpha=1.0), base, rtol=0, atol=1e-6)
    real = text.clone()
    real[:, 2] += 1.0
    moved = changed(enc(vision, real, mask, alpha=1.0), base)
    # causal keeps the specified order [X_v ; text]: image positions come first and cannot read the prompt
    assert moved == [not causal] * 6
    gated = changed(enc(vision, real, mask, alpha=0.0), enc(vision, text, mask, alpha=0.0))
    assert gated == [False] * 6, "alpha = 0 closes the text gate"


def test_empty_text_and_width_errors():
    enc, (vision, text, mask) = encoder(False), inputs()
    assert enc(vision, text[:, :0], mask[:, :0]).shape == (2, 6, 32)
    with pytest.raises(ValueError, match="text width 24"):
        enc(vision, text[..., :8], mask)
