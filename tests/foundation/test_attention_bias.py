"""The removal bias (methods.md §1.8 item 2): equals physical removal, exact at keep-all, masked-softmax gradient.

Both families, tiny random models, a left-padded batch of 2 with a different set of dropped visual tokens per
sample. Run: `python -m pytest -q tests/foundation/test_attention_bias.py`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from steprune.backbones import adapter_for
from steprune.backbones.attention_bias import removal_attention_mask, removal_forward, visual_key_bias
from steprune.backbones.splice import image_placeholder_mask
from steprune.pruners import PruneResult
from tests.inputs import chat_prompt, random_images

ANSWERS = ("red", "three objects, left of the blue circle")
LABELLED = 4  # answer tokens with labels: the last columns, aligned in both left-padded sequences
IGNORE = -100


def answer_batch(processor) -> dict:
    """A left-padded batch of 2 chat prompts followed by answers of different lengths, one image each."""
    questions = ("What colour is it?", "Describe it.")
    texts = [chat_prompt(processor, q) + " " + a for q, a in zip(questions, ANSWERS, strict=True)]
    return processor(images=random_images(2, 32, seed=3), text=texts, return_tensors="pt", padding=True)


def last_column_labels(input_ids: torch.Tensor) -> torch.Tensor:
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, -LABELLED:] = input_ids[:, -LABELLED:]
    return labels


def extras(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k in ("pixel_values", "image_grid_thw", "mm_token_type_ids")}


def full_length(model, inputs: dict):
    """(adapter, visual tokens (B, N, D), embeds (B, S, D), positions, image slots (B, S)) of the full sequence."""
    adapter = adapter_for(model)
    with torch.no_grad():
        vision = adapter.encode_images(**extras(inputs))
        embeds = adapter.full_length_embeds(inputs["input_ids"], vision.image_tokens)
    positions = adapter.full_positions(inputs["input_ids"], inputs["attention_mask"], **extras(inputs))
    slots = image_placeholder_mask(inputs["input_ids"], adapter.image_token_id, vision.image_tokens.shape[1])
    return adapter, vision, embeds, positions, slots


def hard_keep(n: int) -> torch.Tensor:
    """(2, N) 0/1 keep values, a different dropped set per sample, at least one kept and one dropped each."""
    keep = torch.rand(2, n, generator=torch.Generator().manual_seed(5)) > 0.5
    keep[:, 0], keep[0, 1], keep[1, 1], keep[1, -1] = True, False, True, False
    assert not torch.equal(keep[0], keep[1])
    return keep


def test_the_batch_is_left_padded(family):
    _, processor = family
    mask = answer_batch(processor)["attention_mask"]
    assert bool((mask[:, -1] == 1).all()) and bool((mask[:, 0] == 0).any()), "the batch must be left-padded"


def test_bias_equals_physical_removal_with_original_positions(family):
    model, processor = family
    inputs = answer_batch(processor)
    adapter, vision, embeds, positions, slots = full_length(model, inputs)
    keep = hard_keep(vision.image_tokens.shape[1])
    with torch.no_grad():
        biased = removal_forward(
            model, embeds, inputs["attention_mask"], slots, keep.float(), positions,
            labels=last_column_labels(inputs["input_ids"]),
        )  # fmt: skip
        spliced = adapter.splice(
            inputs["input_ids"], inputs["attention_mask"], vision, PruneResult.from_mask(keep), "keep_original",
            **extras(inputs),
        )  # fmt: skip
        assert spliced.image_slots.sum(1).tolist() == keep.sum(1).tolist()
        assert torch.equal(spliced.input_ids[:, -LABELLED:], inputs["input_ids"][:, -LABELLED:])
        removed = model(**spliced.model_kwargs(), labels=last_column_labels(spliced.input_ids), use_cache=False)
        torch.testing.assert_close(biased.loss, removed.loss, rtol=0, atol=1e-4)
        # per answer token too, tight enough (measured ~1e-7) to tell the original positions from renumbered ones
        answer_logits = biased.logits[:, -LABELLED:]
        torch.testing.assert_close(answer_logits, removed.logits[:, -LABELLED:], rtol=0, atol=1e-5)
        renumbered = adapter.splice(
            inputs["input_ids"], inputs["attention_mask"], vision, PruneResult.from_mask(keep), "contiguous",
            **extras(inputs),
        )  # fmt: skip
        contiguous_logits = model(**renumbered.model_kwargs(), use_cache=False).logits[:, -LABELLED:]
        unpruned = model(**inputs, labels=last_column_labels(inputs["input_ids"]), use_cache=False)
    assert float((contiguous_logits - answer_logits).abs().max()) > 1e-5, "positions must matter (else void)"
    assert abs(float(unpruned.loss - removed.loss)) > 1e-3, "dropping must change the loss (else void)"


def test_keep_all_reproduces_the_unpruned_logits(family):
    model, processor = family
    inputs = answer_batch(processor)
    _, vision, embeds, positions, slots = full_length(model, inputs)
    keep = torch.ones(vision.image_tokens.shape[:2])
    with torch.no_grad():
        biased = removal_forward(model, embeds, inputs["attention_mask"], slots, keep, positions).logits
        reference = model(**inputs, use_cache=False).logits
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(biased[real], reference[real], rtol=1e-5, atol=1e-5)


def answer_loss(model, inputs: dict, embeds, positions, slots, keep: torch.Tensor) -> torch.Tensor:
    """The labelled LM loss through the bias, in the logits' own dtype (HF's loss upcasts to float32 only)."""
    logits = removal_forward(model, embeds, inputs["attention_mask"], slots, keep, positions).logits  # (B, S, V)
    labels = last_column_labels(inputs["input_ids"])
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)


def keep_gradient(model, inputs: dict, embeds, positions, slots, keep: torch.Tensor) -> torch.Tensor:
    """dL/dkeep (B, N) of the labelled LM loss at `keep`."""
    keep = keep.clone().requires_grad_(True)
    answer_loss(model, inputs, embeds, positions, slots, keep).backward()
    return keep.grad


def test_keep_gradient_is_finite_at_zero_and_matches_finite_differences(family):
    model, processor = family
    inputs = answer_batch(processor)
    _, vision, embeds, positions, slots = full_length(model, inputs)
    keep = hard_keep(vision.image_tokens.shape[1]).float()
    grad32 = keep_gradient(model, inputs, embeds, positions, slots, keep)
    assert bool(torch.isfinite(grad32).all())
    dropped = keep == 0
    assert bool((grad32[dropped].abs() > 1e-7).all()), "every dropped token must receive a gradient"

    with sdpa_kernel(SDPBackend.MATH):  # the reference SDPA: plain softmax, mask gradient by autograd
        grad_math = keep_gradient(model, inputs, embeds, positions, slots, keep)
    torch.testing.assert_close(grad32, grad_math, rtol=1e-4, atol=1e-6)

    model64 = copy.deepcopy(model).double()
    embeds64, keep64 = embeds.double(), keep.double()
    grad64 = keep_gradient(model64, inputs, embeds64, positions, slots, keep64)
    torch.testing.assert_close(grad32, grad64.float(), rtol=1e-3, atol=1e-5)

    # Finite differences of the float64 model along directions that only raise the dropped m (m < 0 has no log).
    # HF's RMSNorm rounds through float32, so the loss moves in steps of ~1e-7: one-sided differences at
    # h = 0.1, 0.05, 0.025 with Richardson extrapolation (error O(h^3)) instead of tiny central steps.
    def loss_along(direction: torch.Tensor, h: float) -> float:
        with torch.no_grad():
            return float(answer_loss(model64, inputs, embeds64, positions, slots, keep64 + h * direction))

    base = loss_along(torch.zeros_like(keep64), 0.0)
    random_sign = torch.randint(0, 2, keep64.shape, generator=torch.Generator().manual_seed(1)).double() * 2 - 1
    directions = {
        "raise every dropped token": (keep64 == 0).double(),
        "raise dropped, move kept either way": torch.where(keep64 == 0, 1.0, random_sign),
    }
    for name, direction in directions.items():
        slope = [(loss_along(direction, h) - base) / h for h in (0.1, 0.05, 0.025)]
        numeric = (8 * slope[2] - 6 * slope[1] + slope[0]) / 3
        analytic = float((grad64 * direction).sum())
        assert numeric == pytest.approx(analytic, rel=1e-3), f"{name}: FD {numeric}, autograd {analytic}"


def test_one_attention_gradient_is_the_masked_softmax_gradient():
    """dL/dm_j through log(m + eps) == sum_r attn_rj dO_r . (v_j - O_r) of the masked softmax (m, no eps)."""
    torch.manual_seed(0)
    b, s, d = 2, 9, 8
    attention_mask = torch.ones(b, s, dtype=torch.long)
    attention_mask[1, :2] = 0
    slots = torch.zeros(b, s, dtype=torch.bool)
    slots[0, 1:6], slots[1, 3:8] = True, True
    m = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    q, k, v, grad_out = (torch.randn(b, 1, s, d, dtype=torch.float64) for _ in range(4))
    mask = removal_attention_mask(attention_mask, slots, m, torch.float64)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    (out * grad_out).sum().backward()

    key_m = torch.where(slots, visual_key_bias(slots, m.detach(), eps=0.0).exp(), 1.0)[:, None, None, :]  # (B,1,1,S)
    allowed = mask.detach() > torch.finfo(torch.float64).min
    scores = (q @ k.transpose(-1, -2) / d**0.5).masked_fill(~allowed, float("-inf"))  # (B, 1, S, S)
    exp = scores.exp()
    attn = exp * key_m / (exp * key_m).sum(-1, keepdim=True)  # masked softmax: removed keys exactly 0
    o = attn @ v  # (B, 1, S, d)
    unnorm = exp / (exp * key_m).sum(-1, keepdim=True)  # d attn_rj / d m_j = unnorm_rj (delta - attn_r.)
    per_key = unnorm * (grad_out @ v.transpose(-1, -2) - (grad_out * o).sum(-1, keepdim=True))  # (B, 1, S, S)
    real = attention_mask.bool()[:, None, :, None]  # padding query rows are not part of the reference
    per_key = (per_key * real).sum(dim=(1, 2))  # (B, S)
    reference = per_key[slots].view(b, -1)
    torch.testing.assert_close(m.grad, reference, rtol=1e-4, atol=1e-6)
    assert bool((m.grad[m.detach() == 0].abs() > 0).all())


def test_mask_is_causal_padded_finite_and_biased_on_visual_keys_only():
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    slots = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    keep = torch.tensor([[1.0, 0.0], [0.25, 1.0]], requires_grad=True)
    graph = removal_attention_mask(attention_mask, slots, keep, torch.bfloat16)
    mask = graph.detach()
    assert mask.shape == (2, 1, 6, 6) and mask.dtype == torch.bfloat16 and bool(torch.isfinite(mask).all())
    low = torch.finfo(torch.bfloat16).min
    assert bool((mask[0, 0, :2, :2].diagonal() > low).all()), "a padding query row reads itself, never nothing"
    later = torch.ones(6, 6, dtype=torch.bool).triu(1)
    assert bool((mask[:, 0][:, later] == low).all()), "no query reads a later key"
    assert bool((mask[0, 0, 2:, :2] == low).all()), "no real query reads a padding key"
    assert float(mask[0, 0, 5, 4]) == pytest.approx(float(torch.log(torch.tensor(1e-6))), abs=0.05)
    assert float(mask[1, 0, 5, 1]) == pytest.approx(float(torch.log(torch.tensor(0.25 + 1e-6))), abs=0.01)
    assert float(mask[1, 0, 5, 0]) == 0.0 and float(mask[1, 0, 5, 5]) == 0.0, "text keys get no bias"
    graph.float().sum().backward()
    assert bool(torch.isfinite(keep.grad).all()) and bool((keep.grad != 0).all())


def test_keep_of_the_wrong_size_is_refused():
    slots = torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)
    with pytest.raises(ValueError, match="one keep value per visual token"):
        removal_attention_mask(torch.ones(1, 4), slots, torch.ones(1, 3), torch.float32)


def test_attention_without_additive_masks_is_refused(llava):
    model, processor = llava
    inputs = answer_batch(processor)
    _, vision, embeds, positions, slots = full_length(model, inputs)
    flash = copy.deepcopy(model)
    flash.config.get_text_config()._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        removal_forward(flash, embeds, inputs["attention_mask"], slots, torch.ones(2, 16), positions)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cuda_backward_through_the_mask(llava, dtype):
    """On CUDA the fused SDPA backward yields the mask gradient (pytorch #148476 sidestepped) and matches MATH."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model, processor = llava
    model = copy.deepcopy(model).to("cuda", dtype)
    inputs = {k: v.to("cuda") for k, v in answer_batch(processor).items()}
    _, vision, embeds, positions, slots = full_length(model, inputs)
    keep = hard_keep(vision.image_tokens.shape[1]).float().cuda()
    fused = keep_gradient(model, inputs, embeds, positions, slots, keep)
    with sdpa_kernel(SDPBackend.MATH):
        reference = keep_gradient(model, inputs, embeds, positions, slots, keep)
    assert bool(torch.isfinite(fused).all())
    relative = float((fused - reference).norm() / reference.norm())
    assert relative < (1e-4 if dtype == torch.float32 else 5e-2), (
        f"fused vs MATH mask gradient: relative error {relative}"
    )
