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

from steprune.backbones.splice import PositionPolicy, SplicedInputs, image_placeholder_mask, splice_kept_tokens
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
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def decoder(self) -> nn.Module:
        """The LLM decoder stack (has `.layers`, `.norm`, `.rotary_emb`); both families keep it here."""
        return self.model.model.language_model

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

    def project(self, vision_features: Tensor) -> Tensor:
        """Vision-space features (B, N, D_v) -> the LLM-space tokens the LLM consumes (B, N, D_llm)."""
        return vision_features

    def prompt_embeddings(
        self, input_ids: Tensor, attention_mask: Tensor, keep: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Word embeddings of the prompt without image placeholders, left-padded: (B, L_t, D), (B, L_t).

        `keep` (B, L) bool narrows the prompt further (training drops the answer tokens this way).
        """
        ids, mask = self.prompt_ids(input_ids, attention_mask, keep)
        return self.embed_tokens(ids), mask

    def prompt_ids(
        self, input_ids: Tensor, attention_mask: Tensor, keep: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The token ids of `prompt_embeddings`' rows (pad id off the mask): (B, L_t) long, (B, L_t) bool."""
        is_text = attention_mask.bool() & (input_ids != self.image_token_id)
        if keep is not None:
            is_text = is_text & keep
        counts = is_text.sum(dim=1)
        length = max(int(counts.max()), 1)
        dest = (length - counts).unsqueeze(1) + is_text.long().cumsum(dim=1) - 1
        dest = dest.masked_fill(~is_text, length)
        ids = input_ids.new_full((input_ids.shape[0], length + 1), self.pad_token_id)
        ids.scatter_(1, dest, input_ids)
        mask = torch.zeros_like(ids, dtype=torch.bool).scatter_(1, dest, is_text)
        return ids[:, :length], mask[:, :length]

    def full_length_embeds(self, input_ids: Tensor, image_tokens: Tensor) -> Tensor:
        """(B, L, D) input embeddings with every image placeholder replaced by `image_tokens` (B, N, D)."""
        embeds = self.embed_tokens(input_ids)
        slots = image_placeholder_mask(input_ids, self.image_token_id, image_tokens.shape[1])
        return embeds.masked_scatter(slots.unsqueeze(-1), image_tokens.to(embeds.dtype))

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
        # padding entries (index 0, mask False) go to a scratch column so they never clear a kept token 0
        scatter_at = keep.masked_fill(~result.keep_mask, n)
        keep_placeholder = torch.zeros(b, n + 1, dtype=torch.bool, device=keep.device)
        keep_placeholder.scatter_(1, scatter_at, True)
        keep_placeholder = keep_placeholder[:, :n]
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
