"""Prefill FLOPs accounting for visual-token pruning (one convention: a multiply-add counts as 2 FLOPs).

Two halves:

* an **analytic counter** in the StepPrune/FastV convention (``docs/methods.md`` section 4): per decoder
  layer ``2 * (4 n d^2 + 2 n^2 d + 3 n d m)`` for ``n`` tokens, hidden size ``d`` and MLP size ``m``,
  plus the CLIP vision tower, the LLaVA projector and methods that drop tokens *inside* the LLM;
* an **empirical check**, :func:`measured_forward_flops`, that counts a real forward with
  ``torch.utils.flop_counter.FlopCounterMode`` (including the CPU SDPA kernel it otherwise counts as 0).

Usage::

    from transformers import LlavaConfig
    from steprune.eval.flops import prefill_cost

    cost = prefill_cost(LlavaConfig(), visual_tokens=64, text_tokens=92)
    cost.tflops("llm")                                            # ~2.03 for LLaVA-1.5-7B
    prefill_cost(LlavaConfig(), 576, 92, stages=[(0, 576), (2, 64)])   # FastV, K=2, R=64

Nothing here allocates weights or touches global state; the configs are only read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = [
    "PrefillCost",
    "clip_layer_flops",
    "cpu_flash_sdpa_flop",
    "decoder_layer_flops",
    "equivalent_visual_tokens",
    "in_llm_prefill_flops",
    "llm_prefill_flops",
    "measured_forward_flops",
    "measured_prefill_cost",
    "prefill_cost",
    "projector_flops",
    "vision_tower_flops",
]

Stages = Sequence[tuple[int, int]]


# --------------------------------------------------------------------------------------------------------
# Analytic counter
# --------------------------------------------------------------------------------------------------------
def decoder_layer_flops(n: int, d: int, m: int) -> float:
    """FLOPs of one LLaMA-style decoder layer over ``n`` tokens: ``2 * (4nd^2 + 2n^2d + 3ndm)``.

    ``4nd^2``: q, k, v, o projections; ``2n^2d``: scores ``QK^T`` and the weighted sum ``AV`` (full
    ``n x n``, the causal mask is not discounted); ``3ndm``: gated MLP (gate, up, down). Norms, rotary,
    softmax and the residual adds are ignored.
    """
    return 2.0 * (4 * n * d**2 + 2 * n**2 * d + 3 * n * d * m)


def clip_layer_flops(n: int, d: int, m: int) -> float:
    """FLOPs of one CLIP encoder layer: ``2 * (4nd^2 + 2n^2d + 2ndm)`` (its MLP is fc1/fc2, 2 matmuls)."""
    return 2.0 * (4 * n * d**2 + 2 * n**2 * d + 2 * n * d * m)


def _text_config(config: Any) -> Any:
    """The decoder config of ``config`` (itself for a text config, ``.text_config`` for a composite one)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _llm_dims(text_config: Any) -> tuple[int, int, int]:
    cfg = _text_config(text_config)
    return int(cfg.num_hidden_layers), int(cfg.hidden_size), int(cfg.intermediate_size)


def _lm_head_flops(text_config: Any) -> float:
    cfg = _text_config(text_config)
    return 2.0 * cfg.hidden_size * cfg.vocab_size


def llm_prefill_flops(text_config: Any, num_tokens: int, include_lm_head: bool = False) -> float:
    """Prefill FLOPs of the LLM decoder over ``num_tokens`` tokens (visual + text), summed over layers.

    Reads ``num_hidden_layers``, ``hidden_size`` and ``intermediate_size`` from any HF text config
    (``LlamaConfig``, a Qwen2 text config, or a composite config via ``get_text_config()``). The
    convention is kept exactly as in the papers: it **ignores GQA** (k/v projections are counted at full
    width ``d``), the causal mask, norms/rotary/softmax and, by default, the **LM head**.
    ``include_lm_head=True`` adds ``2 * d * vocab_size`` for the last position only (prefill needs one
    next-token distribution).
    """
    layers, d, m = _llm_dims(text_config)
    total = layers * decoder_layer_flops(num_tokens, d, m)
    if include_lm_head:
        total += _lm_head_flops(text_config)
    return total


def _validate_stages(stages: Stages, num_layers: int) -> list[tuple[int, int]]:
    stages = [(int(s), int(v)) for s, v in stages]
    if not stages or stages[0][0] != 0:
        raise ValueError(f"stages must start at layer 0, got {stages}")
    starts = [s for s, _ in stages]
    if any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
        raise ValueError(f"stage start layers must be strictly increasing, got {stages}")
    if starts[-1] >= num_layers:
        raise ValueError(f"stage start {starts[-1]} is past the last layer ({num_layers} layers)")
    if any(v < 0 for _, v in stages):
        raise ValueError(f"visual token counts must be >= 0, got {stages}")
    return stages


def _visual_tokens_per_layer(num_layers: int, stages: Stages) -> list[int]:
    """The visual token count each of the ``num_layers`` layers sees under ``stages``."""
    stages = _validate_stages(stages, num_layers)
    bounds = [s for s, _ in stages[1:]] + [num_layers]
    return [v for (start, v), end in zip(stages, bounds, strict=True) for _ in range(start, end)]


def in_llm_prefill_flops(
    text_config: Any,
    text_tokens: int,
    visual_tokens_per_stage: Stages,
    include_lm_head: bool = False,
) -> float:
    """Prefill FLOPs when visual tokens are dropped *inside* the LLM (FastV, PDrop, ...).

    ``visual_tokens_per_stage`` is a list of ``(start_layer, visual tokens kept from that layer on)``
    starting at layer 0, e.g. FastV with K=2 keeping 64 of 576: ``[(0, 576), (2, 64)]``. Every layer is
    counted with :func:`decoder_layer_flops` at ``text_tokens + visual``; the ranking cost (attention
    read-out) is not included, pass it as ``selection_flops`` to :func:`prefill_cost`.
    """
    layers, d, m = _llm_dims(text_config)
    total = sum(
        decoder_layer_flops(text_tokens + v, d, m) for v in _visual_tokens_per_layer(layers, visual_tokens_per_stage)
    )
    if include_lm_head:
        total += _lm_head_flops(text_config)
    return total


def equivalent_visual_tokens(text_config_or_num_layers: Any, visual_tokens_per_stage: Stages) -> float:
    """Layer-averaged visual token count of an in-LLM schedule (how papers report in-LLM methods).

    ``[(0, 576), (2, 64)]`` over 32 layers gives ``(2 * 576 + 30 * 64) / 32 = 96``.
    """
    if isinstance(text_config_or_num_layers, int):
        layers = text_config_or_num_layers
    else:
        layers = _llm_dims(text_config_or_num_layers)[0]
    per_layer = _visual_tokens_per_layer(layers, visual_tokens_per_stage)
    return sum(per_layer) / layers


def vision_tower_flops(vision_config: Any, num_patches_plus_cls: int, num_layers: int | None = None) -> float:
    """FLOPs of a CLIP-style vision tower over ``num_patches_plus_cls`` tokens (patches + CLS).

    Per encoder layer :func:`clip_layer_flops` (CLIP's MLP is 2 matmuls, so ``2ndm`` instead of the
    LLM's ``3ndm``), plus the patch-embedding conv ``2 * n_patches * d * C * p^2`` (C = num_channels,
    3 for RGB). ``num_layers`` defaults to all ``num_hidden_layers``: Hugging Face LLaVA runs the whole
    tower even though it reads ``hidden_states[-2]``; pass fewer to count only what the features need.
    Layer norms, GELU and the position-embedding add are ignored.
    """
    d, m, p = (
        int(vision_config.hidden_size),
        int(vision_config.intermediate_size),
        int(vision_config.patch_size),
    )
    channels = int(getattr(vision_config, "num_channels", 3))
    layers = int(vision_config.num_hidden_layers if num_layers is None else num_layers)
    n_patches = num_patches_plus_cls - 1
    patch_embed = 2.0 * n_patches * d * channels * p**2
    return patch_embed + layers * clip_layer_flops(num_patches_plus_cls, d, m)


def projector_flops(in_features: int, text_hidden: int, num_tokens: int) -> float:
    """FLOPs of LLaVA's 2-layer MLP projector (``in_features -> text_hidden -> text_hidden``).

    ``2 * n * (in_features * text_hidden + text_hidden^2)``; the GELU and the biases are ignored.
    ``in_features`` is the vision hidden size times the number of feature layers that are concatenated.
    """
    return 2.0 * num_tokens * (in_features * text_hidden + text_hidden**2)


# --------------------------------------------------------------------------------------------------------
# Whole prefill of a LLaVA model
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrefillCost:
    """Prefill FLOPs of one LLaVA request, broken down by stage (all in FLOPs, multiply-add = 2)."""

    vision: float
    projector: float
    selection: float
    llm: float

    @property
    def total(self) -> float:
        return self.vision + self.projector + self.selection + self.llm

    def tflops(self, part: str = "total") -> float:
        """``part`` (``vision``, ``projector``, ``selection``, ``llm`` or ``total``) in TFLOPs."""
        names = {f.name for f in fields(self)} | {"total"}
        if part not in names:
            raise ValueError(f"unknown part {part!r}, expected one of {sorted(names)}")
        return getattr(self, part) / 1e12


def _llava_image_geometry(model_config: Any) -> tuple[int, int, int]:
    """(tokens through the tower incl. CLS, tokens through the projector, projector in_features)."""
    vc = model_config.vision_config
    n_patches = (int(vc.image_size) // int(vc.patch_size)) ** 2
    feature_layer = model_config.vision_feature_layer
    n_feature_layers = 1 if isinstance(feature_layer, int) else len(feature_layer)
    projected = n_patches if model_config.vision_feature_select_strategy == "default" else n_patches + 1
    return n_patches + 1, projected, int(vc.hidden_size) * n_feature_layers


def prefill_cost(
    model_config: Any,
    visual_tokens: int,
    text_tokens: int,
    selection_flops: float = 0.0,
    stages: Stages | None = None,
) -> PrefillCost:
    """Prefill cost of one image + prompt on a ``LlavaConfig``-shaped model.

    The vision tower and projector always run on the full image (pruning happens after
    ``get_image_features``); the LLM sees ``visual_tokens + text_tokens``. For in-LLM pruning pass
    ``stages`` (see :func:`in_llm_prefill_flops`); its first entry must be ``(0, visual_tokens)``.
    ``selection_flops`` is the pruner's own cost (e.g. a StepPrune selector forward), added as is.
    """
    if stages is None:
        stages = [(0, visual_tokens)]
    elif tuple(stages[0]) != (0, visual_tokens):
        raise ValueError(f"stages must start with (0, {visual_tokens}), got {list(stages)}")
    tower_tokens, projected_tokens, in_features = _llava_image_geometry(model_config)
    text_cfg = model_config.text_config
    return PrefillCost(
        vision=vision_tower_flops(model_config.vision_config, tower_tokens),
        projector=projector_flops(in_features, int(text_cfg.hidden_size), projected_tokens),
        selection=float(selection_flops),
        llm=in_llm_prefill_flops(text_cfg, text_tokens, stages),
    )


def measured_prefill_cost(
    model_config: Any,
    num_tokens: int,
    stages: Stages,
    kept: int,
    text_tokens: int,
    selection_flops: float = 0.0,
) -> PrefillCost:
    """Prefill cost from what a pruned forward reported (`PrunedOutput.visual_tokens_per_stage` as `stages`):
    an in-LLM method (several stages) through its drops — every layer before the first sees all `num_tokens` —
    any other method at `kept` visual tokens."""
    if len(stages) > 1:
        full = [(0, num_tokens), *[tuple(stage) for stage in stages[1:]]]
        return prefill_cost(model_config, num_tokens, text_tokens, selection_flops, stages=full)
    return prefill_cost(model_config, kept, text_tokens, selection_flops)


# --------------------------------------------------------------------------------------------------------
# Empirical check
# --------------------------------------------------------------------------------------------------------
def cpu_flash_sdpa_flop(
    query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """Flop formula for ``aten._scaled_dot_product_flash_attention_for_cpu`` (q/k/v are ``[B, H, L, E]``).

    Same as torch's own formula for the CUDA SDPA kernels: ``QK^T`` + ``AV``, the causal mask is not
    discounted (matching :func:`decoder_layer_flops`).
    """
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def measured_forward_flops(module_call: Callable[[], Any], count_cpu_sdpa: bool = True) -> float:
    """FLOPs of ``module_call()`` counted by ``FlopCounterMode`` under ``torch.no_grad()``.

    ``FlopCounterMode`` counts matmuls/convs/SDPA exactly (multiply-add = 2) and nothing else, but it has
    no formula for the CPU flash SDPA kernel and counts it as 0; ``count_cpu_sdpa=True`` (the default)
    adds one through the per-instance ``custom_mapping`` (no module-level registry is touched).
    """
    mapping = (
        {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash_sdpa_flop} if count_cpu_sdpa else {}
    )
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.no_grad(), counter:
        module_call()
    return float(counter.get_total_flops())
