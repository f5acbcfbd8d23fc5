"""LLaVA-1.5 family adapter (`LlavaForConditionalGeneration`): CLIP tower, feature layer, projector.

Reads vision features exactly as `get_image_features` does (selected tower layer, CLS dropped under the
"default" strategy), but keeps the tower's hidden states so CLS attention can be computed explicitly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from steprune.backbones.base import BackboneAdapter, VisionOutput
from steprune.backbones.splice import full_sequence_positions
from steprune.backbones.vision_access import ClipVisionAccess


class LlavaAdapter(BackboneAdapter):
    family = "llava"

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def encode_images(self, pixel_values: Tensor | None = None, **inputs: Any) -> VisionOutput:
        if pixel_values is None:
            raise ValueError("LLaVA needs `pixel_values` from its processor")
        config = self.model.config
        size = config.vision_config.image_size
        channels = config.vision_config.num_channels
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (channels, size, size):
            raise ValueError(
                f"pixel_values of shape {tuple(pixel_values.shape)}: this model takes (B, {channels}, {size}, {size}); "
                "convert images to RGB and resize them with the model's processor"
            )
        tower = self.vision_tower
        dtype = next(tower.parameters()).dtype
        out = tower(pixel_values.to(dtype), output_hidden_states=True, return_dict=True)
        layers = config.vision_feature_layer
        layers = [layers] if isinstance(layers, int) else list(layers)
        selected = [out.hidden_states[i] for i in layers]
        if config.vision_feature_select_strategy == "default":
            selected = [h[:, 1:] for h in selected]
        features = torch.cat(selected, dim=-1)  # (B, N, D_v * len(layers))
        tokens = self.project(features)  # (B, N, D_llm)
        n = tokens.shape[1]
        side = int(round(n**0.5))
        grid = (side, side) if side * side == n else (1, n)
        encoder = tower.vision_model.encoder if hasattr(tower, "vision_model") else tower.encoder
        access = ClipVisionAccess(out.hidden_states, encoder.layers)
        return VisionOutput(tokens, features, grid, access)

    def project(self, vision_features: Tensor) -> Tensor:
        return self.model.model.multi_modal_projector(vision_features)

    def full_positions(self, input_ids: Tensor, attention_mask: Tensor, **inputs: Any) -> Tensor:
        return full_sequence_positions(attention_mask)
