"""Exact mean K at inference (methods.md §1.8 item 5): bisect an offset on StepPrune's STOP logit on a split.

    info = calibrate_stop_offset(module.selector, encode_split(module, val_loader), target_k=16)
    module.selector.save("selector.safetensors")   # the offset is in its config, `info` in its metadata

A trained selector's mean K lands near, not at, the controller's target. Adding delta to the STOP logit at
every pointer step changes no visual choice (the argmax over the visual tokens does not see STOP); it only
moves each sample's stop to the same step or an earlier one as delta grows, so every sample's K, and the
split's mean K, is non-increasing in delta. Bisection on delta therefore finds the offset whose mean K on the
calibration split is the closest it can be to K* (K is an integer per sample: the mean moves in steps of
1/n). The encoder runs once per batch; each bisection step reruns only the pointer loop. The `steprune`
pruner applies the saved offset; `ExportSelector(calibrate_to=K*)` calibrates on the validation split at the
end of fit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from steprune.pruners.mmtok import default_coverage_t
from steprune.selector.selector import StepPruneSelector

Encoded = list[tuple[Tensor, int, Tensor | None]]  # per batch: encoder output h (B, N, D), T_max, coverage (B, N, R)


@torch.no_grad()
def encode_split(module: Any, batches: Iterable[dict[str, Any]]) -> Encoded:
    """Encoder outputs of a split's generation batches for `module` (a StepPruneModule), exactly as the `steprune`
    pruner sees them at inference: vision features, the prompt's word embeddings, text gate 1."""
    selector: StepPruneSelector = module.selector
    param = next(selector.parameters())
    encoded: Encoded = []
    for batch in batches:
        batch = {k: v.to(param.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        vision_inputs = {k: v for k, v in batch.items() if k in ("pixel_values", "image_grid_thw")}
        image = module.adapter.encode_images(**vision_inputs)
        vision = image.vision_features
        text, text_mask = module.adapter.prompt_embeddings(batch["input_ids"], batch["attention_mask"])
        h = selector.encoder(vision.to(param.dtype), text.to(param.dtype), text_mask, 1.0)
        cover = None
        if selector.prior == "coverage":  # the coverage prior's input, as the pruner computes it
            cover = default_coverage_t(image.image_tokens, vision, text, text_mask).to(param.dtype)
        encoded.append((h, selector.steps_for(vision.shape[1]), cover))
    return encoded


@torch.no_grad()
def mean_k(selector: StepPruneSelector, encoded: Encoded, offset: float) -> float:
    """Mean greedy K over the encoded split with STOP offset `offset`."""
    ks = [selector.decode(h, t_max=t_max, stop_offset=offset, cover=cover).lengths for h, t_max, cover in encoded]
    return float(torch.cat(ks).float().mean())


def calibrate_stop_offset(
    selector: StepPruneSelector,
    encoded: Encoded,
    target_k: float,
    bound: float = 8.0,
    max_bound: float = 256.0,
    iterations: int = 40,
    split: str = "val",
) -> dict[str, Any]:
    """Set `selector`'s STOP offset so that the split's mean K is the closest to `target_k`; returns the record.

    The bracket [-bound, bound] doubles until it holds the target (up to `max_bound`); if K* is out of reach
    (above T_max, or below the floor min_k) the nearest end is taken and the record says so.
    """
    if not encoded:
        raise ValueError("calibration needs at least one batch of the calibration split")
    if target_k <= 0:
        raise ValueError(f"target_k must be > 0, got {target_k}")
    was_training = selector.training
    selector.eval()
    lo, hi = -bound, bound
    k_lo, k_hi = mean_k(selector, encoded, lo), mean_k(selector, encoded, hi)
    while (k_lo < target_k or k_hi > target_k) and hi < max_bound:
        lo, hi = lo * 2, hi * 2
        k_lo, k_hi = mean_k(selector, encoded, lo), mean_k(selector, encoded, hi)
    for _ in range(iterations):
        if k_lo < target_k or k_hi > target_k or k_lo - k_hi <= 0:
            break  # out of reach, or already a single step of the mean
        mid = (lo + hi) / 2
        k_mid = mean_k(selector, encoded, mid)
        if k_mid > target_k:
            lo, k_lo = mid, k_mid
        else:
            hi, k_hi = mid, k_mid
    offset, achieved = (lo, k_lo) if abs(k_lo - target_k) <= abs(k_hi - target_k) else (hi, k_hi)
    record = {
        "target_k": float(target_k),
        "mean_k": achieved,
        "stop_offset": float(offset),
        "uncalibrated_mean_k": mean_k(selector, encoded, 0.0),
        "split": split,
        "samples": int(sum(h.shape[0] for h, *_ in encoded)),
        "reachable": bool(k_lo >= target_k >= k_hi),
    }
    selector.set_stop_offset(offset, record)
    selector.train(was_training)
    return record
