"""Removal as an attention bias: the frozen MLLM on the full sequence, dropped visual keys masked softly.

The training path of the removal surrogate (docs/methods.md §1.8 item 2). Every query of every LLM layer
gets the bias `b_j = log(m_j + eps)` on the logit of visual key j (text keys get 0), so a kept token
(m_j = 1) is untouched and a dropped one (m_j = 0) is removed up to an eps leak, while
dL/dm_j = (dL/db_j) / (m_j + eps) stays finite at m_j = 0 and equals the masked-softmax gradient.
With a frozen Hugging Face model this is one 4-D float mask (B, 1, S, S) = causal + padding + b, passed as
`attention_mask` with the ORIGINAL positions (the `keep_original` policy).

    slots = image_placeholder_mask(input_ids, adapter.image_token_id, n)        # (B, S) bool
    embeds = adapter.full_length_embeds(input_ids, image_tokens)                # (B, S, D)
    positions = adapter.full_positions(input_ids, attention_mask, **extras)     # (B, S) or (3, B, S)
    out = removal_forward(model, embeds, attention_mask, slots, m, positions, labels=labels)
    out.loss.backward()                                                         # m.grad: (B, N)

What the installed transformers (5.x) does with the 4-D mask, checked in its source:
- `masking_utils._preprocess_mask_arguments` returns any 4-D mask as-is (early exit of `create_causal_mask`
  and `create_sliding_window_causal_mask`), so Llama (LLaVA's LM) and Qwen2.5-VL's text model hand it
  unchanged to every decoder layer; `integrations/sdpa_attention.py` passes it to SDPA as `attn_mask` and sets
  `is_causal=False` because a mask is given. Causality therefore lives in this mask.
- Qwen2.5-VL recomputes M-RoPE (`compute_3d_position_ids`) only when `position_ids` is None; here they are
  always given (computed by the adapter on the full sequence), so nothing is derived from the 4-D mask.
- Neither family uses the 2-D mask for anything else once `inputs_embeds` and `position_ids` are given
  (the loss reads only logits and labels), so no 2-D mask is passed.
- A sliding-window layer would lose its window (the 4-D mask replaces it), and flash / flex attention do not
  take an additive float mask: both are refused with a clear error. Nothing switches the model to eager.

Run the tests: `python -m pytest -q tests/foundation/test_attention_bias.py`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

REMOVAL_EPS = 1e-6
ADDITIVE_MASK_ATTENTION = ("sdpa", "eager")  # attention implementations that add a float 4-D mask to the logits


def visual_key_bias(image_slots: Tensor, keep: Tensor, eps: float = REMOVAL_EPS) -> Tensor:
    """(B, S) bias per key column: log(keep_j + eps) on the j-th visual slot of each row, 0 on every other key.

    `image_slots` (B, S) bool marks the N visual tokens of each row (the same N for every row), in token order;
    `keep` (B, N) holds m in [0, 1]. Differentiable w.r.t. `keep`; computed in at least float32.
    """
    b, n = keep.shape
    counts = image_slots.sum(dim=1)  # (B,)
    if image_slots.shape[0] != b or bool((counts != n).any()):
        raise ValueError(
            f"keep has shape {tuple(keep.shape)} but image_slots marks {counts.tolist()} visual tokens per row: "
            "pass one keep value per visual token, the same N for every sample"
        )
    log_keep = torch.log(keep.to(torch.promote_types(keep.dtype, torch.float32)) + eps)  # (B, N)
    rank = (image_slots.long().cumsum(dim=1) - 1).clamp(0, n - 1)  # (B, S) which visual token sits at each slot
    return torch.where(image_slots, log_keep.gather(1, rank), 0.0)  # (B, S)


def removal_attention_mask(
    attention_mask: Tensor,
    image_slots: Tensor,
    keep: Tensor,
    dtype: torch.dtype,
    eps: float = REMOVAL_EPS,
) -> Tensor:
    """(B, 1, S, S) additive float mask in `dtype` (the query dtype): causal + padding + log(keep + eps).

    `attention_mask` (B, S) is the 0/1 padding mask, `image_slots` (B, S) bool the visual keys, `keep` (B, N)
    the soft or hard keep values m. Query i may read key j when j <= i and key j is not padding; there the
    mask holds the bias of key j, elsewhere `torch.finfo(dtype).min` (finite, not -inf). A padding query row
    reads only itself, so no row is ever fully masked: no NaN, even if autocast later rounds the minimum to
    -inf in a lower precision. Differentiable w.r.t. `keep`.
    """
    if attention_mask.shape != image_slots.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} and image_slots {tuple(image_slots.shape)} "
            "must both be (B, S)"
        )
    s = attention_mask.shape[1]
    device = attention_mask.device
    present = attention_mask.bool()  # (B, S)
    causal = torch.ones(s, s, dtype=torch.bool, device=device).tril()  # (S, S) query row, key column
    diagonal = torch.eye(s, dtype=torch.bool, device=device)  # (S, S)
    allowed = (causal & present[:, None, :]) | diagonal  # (B, S, S)
    bias = visual_key_bias(image_slots, keep, eps).to(dtype)  # (B, S)
    disallowed = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=device)
    return torch.where(allowed, bias[:, None, :], disallowed)[:, None]  # (B, 1, S, S)


def check_additive_mask_support(model: PreTrainedModel) -> None:
    """Raise when the model's LLM would not apply a 4-D additive float mask exactly as given."""
    text_config = model.config.get_text_config()
    implementation = getattr(text_config, "_attn_implementation", None) or model.config._attn_implementation
    if implementation not in ADDITIVE_MASK_ATTENTION:
        raise ValueError(
            f"the removal bias needs an attention that adds a float 4-D mask ({', '.join(ADDITIVE_MASK_ATTENTION)}); "
            f"this model uses {implementation!r}: load it with attn_implementation='sdpa' for training"
        )
    layer_types = getattr(text_config, "layer_types", None) or ()
    if any(kind != "full_attention" for kind in layer_types):
        raise ValueError(
            f"layer types {sorted(set(layer_types))}: a 4-D mask replaces the sliding-window mask, so the removal "
            "bias supports full-attention LLMs only"
        )


def removal_forward(
    model: PreTrainedModel,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    image_slots: Tensor,
    keep: Tensor,
    position_ids: Tensor,
    labels: Tensor | None = None,
    eps: float = REMOVAL_EPS,
    **model_kwargs: Any,
) -> ModelOutput:
    """Run the frozen MLLM on the full sequence with visual key j biased by log(keep_j + eps) in every layer.

    inputs_embeds (B, S, D): the full-length embeddings (`adapter.full_length_embeds`); attention_mask (B, S)
    0/1; image_slots (B, S) bool, the N visual tokens per row; keep (B, N) m in [0, 1]; position_ids (B, S)
    or (3, B, S) for M-RoPE, computed on the full sequence (`adapter.full_positions`) and used unchanged, so a
    kept token sees the position it has at inference under `keep_original`. labels (B, S) give the LM loss.
    Returns the model's output (logits (B, S, V), loss when labels are given); the model stays on SDPA.

    If `keep` needs grad and `inputs_embeds` does not, the embeddings are detached into a leaf that requires
    grad: SDPA's fused backward can fail when the float mask is the only input needing grad (pytorch #148476).
    """
    check_additive_mask_support(model)
    if keep.requires_grad and not inputs_embeds.requires_grad:
        inputs_embeds = inputs_embeds.detach().requires_grad_(True)  # pytorch #148476
    mask = removal_attention_mask(attention_mask, image_slots, keep, inputs_embeds.dtype, eps)  # (B, 1, S, S)
    model_kwargs.setdefault("use_cache", False)
    return model(
        inputs_embeds=inputs_embeds,
        attention_mask=mask,
        position_ids=position_ids,
        labels=labels,
        **model_kwargs,
    )
