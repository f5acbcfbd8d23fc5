"""The backbone adapter: what every MLLM family exposes to pruners, built on the models' public seams.

An adapter never patches the model. It reads vision features through the tower and projector, builds
the prompt context, and turns a `PruneResult` into the shortened `inputs_embeds` / `attention_mask` /
`position_ids` that the model's own `forward` and `generate` accept.

    adapter = adapter_for(model)                 # steprune.backbones
    vision = adapter.encode_images(**processor_outputs)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from steprune.backbones.splice import PositionPolicy, SplicedInputs, splice_kept_tokens
from steprune.backbones.vision_access import VisionAccess
from steprune.pruners.contract import PruneResult


@dataclass(frozen=True)
class VisionOutput:
    """One image per sample, encoded."""

    image_tokens: Tensor  # (B, N, D_llm) after the projector / merger
    vision_features: Tensor  # (B, N, D_v) vision-space features of the same tokens
    grid: tuple[int, int]  # (rows, cols), rows * cols == N
    access: VisionAccess  # explicit attentions / keys on request
    flops: float = 0.0  # analytic FLOPs of the tower + projector (0 when not counted)


class BackboneAdapter(ABC):
    """Family-specific seams; everything else (splicing, hooks, generation) is shared."""

    family: ClassVar[str]

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model

    # ---- what the family must provide -------------------------------------------------------------
    @abstractmethod
    def encode_images(self, **inputs: Any) -> VisionOutput: ...

    @abstractmethod
    def full_positions(self, input_ids: Tensor, attention_mask: Tensor, **inputs: Any) -> Tensor:
        """Positions of the full (unpruned) sequence: (B, L), or (3, B, L) for M-RoPE."""

    @property
    @abstractmethod
    def image_token_id(self) -> int: ...

    @property
    @abstractmethod
    def decoder(self) -> nn.Module:
        """The LLM decoder stack (has `.layers`, `.norm`, `.rotary_emb`)."""

    # ---- shared --------------------------------------------------------------------------------------
    @property
    def pad_token_id(self) -> int:
        text_config = self.model.config.get_text_config()
        pad = getattr(text_config, "pad_token_id", None)
        if pad is None:
            pad = self.model.generation_config.pad_token_id
        return int(pad) if pad is not None else 0

    @property
    def embed_tokens(self) -> nn.Module:
        return self.model.get_input_embeddings()

    @property
    def num_layers(self) -> int:
        return len(self.decoder.layers)

    def prompt_embeddings(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Word embeddings of the prompt without image placeholders, left-padded: (B, L_t, D), (B, L_t)."""
        is_text = attention_mask.bool() & (input_ids != self.image_token_id)
        counts = is_text.sum(dim=1)
        length = max(int(counts.max()), 1)
        dest = (length - counts).unsqueeze(1) + is_text.long().cumsum(dim=1) - 1
        dest = dest.masked_fill(~is_text, length)
        ids = input_ids.new_full((input_ids.shape[0], length + 1), self.pad_token_id)
        ids.scatter_(1, dest, input_ids)
        mask = torch.zeros_like(ids, dtype=torch.bool).scatter_(1, dest, is_text)
        ids, mask = ids[:, :length], mask[:, :length]
        return self.embed_tokens(ids), mask

    def splice(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        vision: VisionOutput,
        result: PruneResult,
        policy: PositionPolicy,
        **inputs: Any,
    ) -> SplicedInputs:
        b, n, _ = vision.image_tokens.shape
        keep = result.keep.clamp(0, n - 1)
        keep_placeholder = torch.zeros(b, n, dtype=torch.bool, device=keep.device)
        keep_placeholder.scatter_(1, keep, result.keep_mask)
        if result.merged is not None:
            kept = result.merged
        else:
            kept = vision.image_tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, vision.image_tokens.shape[-1]))
        positions = self.full_positions(input_ids, attention_mask, **inputs)
        return splice_kept_tokens(
            input_ids,
            attention_mask,
            positions,
            self.image_token_id,
            self.pad_token_id,
            keep_placeholder,
            kept,
            result.keep_mask,
            self.embed_tokens,
            policy,
        )
