"""Qwen2.5-VL family adapter: visual tokens after the 2x2 merger, M-RoPE positions on the full sequence.

Positions are computed by the model's own `get_rope_index` on the unpruned sequence and sliced to the
kept tokens, so decoding continues at max(kept position) + 1 (generate extends the last column).
All images in a batch must share one grid (same resized size); vision-space features are the merged
tokens themselves. The tower has no CLS: methods that score by CLS attention get the HoloV authors' score, the
attention each merged token receives in the tower's last block (`QwenVisionAccess`), from the inputs that block
was called with (an instance pre-hook held for the one call, then removed).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from steprune.backbones.base import BackboneAdapter, VisionOutput
from steprune.backbones.vision_access import QwenVisionAccess, window_order


@contextmanager
def capture_block_call(block: nn.Module) -> Iterator[dict[str, Any]]:
    """Record the hidden states, `cu_seqlens` and position embeddings `block` is called with (one call)."""
    seen: dict[str, Any] = {}

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen["hidden_states"] = args[0] if args else kwargs["hidden_states"]
        seen["cu_seqlens"] = args[1] if len(args) > 1 else kwargs["cu_seqlens"]
        seen["position_embeddings"] = kwargs["position_embeddings"]

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


class Qwen2_5_VLAdapter(BackboneAdapter):
    family = "qwen2_5_vl"

    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    def encode_images(
        self, pixel_values: Tensor | None = None, image_grid_thw: Tensor | None = None, **inputs: Any
    ) -> VisionOutput:
        if pixel_values is None or image_grid_thw is None:
            raise ValueError("Qwen2.5-VL needs `pixel_values` and `image_grid_thw` from its processor")
        grids = image_grid_thw.tolist()
        if any(g != grids[0] for g in grids):
            raise ValueError(f"images of different sizes in one batch (grids {grids}): resize them to one size first")
        t, h, w = grids[0]
        vision_cfg = self.model.config.vision_config
        patch_dim = vision_cfg.in_chans * vision_cfg.temporal_patch_size * vision_cfg.patch_size**2
        if pixel_values.dim() != 2 or pixel_values.shape[1] != patch_dim:
            raise ValueError(
                f"pixel_values of shape {tuple(pixel_values.shape)}: Qwen2.5-VL takes flattened patches "
                f"(num_patches, {patch_dim}) from its processor"
            )
        if pixel_values.shape[0] != t * h * w * len(grids):
            raise ValueError(
                f"{pixel_values.shape[0]} patches for image_grid_thw {grids}: pixel_values and grids disagree"
            )
        visual = self.model.model.visual
        with capture_block_call(visual.blocks[-1]) as last:
            out = self.model.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        tokens = out.pooler_output
        tokens = torch.stack(list(tokens), dim=0)  # (B, N, D_llm)
        grid = (t * h // self.merge_size, w // self.merge_size)
        order = window_order(image_grid_thw, self.merge_size, vision_cfg.window_size, vision_cfg.patch_size)
        access = QwenVisionAccess(
            tokens, visual.blocks[-1], last["hidden_states"], last["cu_seqlens"], last["position_embeddings"], order
        )
        return VisionOutput(tokens, tokens, grid, access)

    def full_positions(self, input_ids: Tensor, attention_mask: Tensor, **inputs: Any) -> Tensor:
        mm_types = inputs.get("mm_token_type_ids")
        if mm_types is None:
            mm_types = (input_ids == self.image_token_id).int()
        positions, _ = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=mm_types,
            image_grid_thw=inputs.get("image_grid_thw"),
            attention_mask=attention_mask,
        )
        return positions.masked_fill(attention_mask.unsqueeze(0) == 0, 1)  # (3, B, L)
