"""Backbone adapters, one per MLLM family, chosen from the model's class.

from steprune.backbones import adapter_for
adapter = adapter_for(model)
"""

from __future__ import annotations

from transformers import PreTrainedModel

from steprune.backbones.base import BackboneAdapter, VisionOutput
from steprune.backbones.llava import LlavaAdapter
from steprune.backbones.qwen2_5_vl import Qwen2_5_VLAdapter

ADAPTERS: dict[str, type[BackboneAdapter]] = {
    "LlavaForConditionalGeneration": LlavaAdapter,
    "Qwen2_5_VLForConditionalGeneration": Qwen2_5_VLAdapter,
}


def adapter_for(model: PreTrainedModel) -> BackboneAdapter:
    """The adapter for `model`'s family; a clear TypeError for families steprune does not support."""
    for cls in type(model).__mro__:
        if cls.__name__ in ADAPTERS:
            return ADAPTERS[cls.__name__](model)
    raise TypeError(f"{type(model).__name__} is not supported; steprune adapts {', '.join(sorted(ADAPTERS))}")


__all__ = ["ADAPTERS", "BackboneAdapter", "LlavaAdapter", "Qwen2_5_VLAdapter", "VisionOutput", "adapter_for"]
