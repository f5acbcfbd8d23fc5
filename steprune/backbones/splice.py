"""Cut the pruned image placeholders out of a batch and splice the kept visual tokens back in.

Works on any family whose processor expands one image into N placeholder tokens: ids, mask and
positions are shortened together, fully vectorised (no per-sample loop), left-padded again so that
generation continues from the last column.

    spliced = splice_kept_tokens(input_ids, attention_mask, positions, image_token_id, pad_token_id,
                                 keep_placeholder, kept_features, embed, policy="keep_original")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

PositionPolicy = Literal["keep_original", "contiguous"]
POSITION_POLICIES: tuple[str, ...] = ("keep_original", "contiguous")


@dataclass(frozen=True)
class SplicedInputs:
    """The shortened batch the LLM prefill consumes."""

    inputs_embeds: Tensor  # (B, L', D)
    attention_mask: Tensor  # (B, L') long
    position_ids: Tensor  # (B, L') or (3, B, L') for M-RoPE
    input_ids: Tensor  # (B, L') the ids behind the embeddings (placeholders for visual tokens)
    image_slots: Tensor  # (B, L') bool: where visual tokens sit in the new sequence

    def model_kwargs(self) -> dict[str, Tensor]:
        return {
            "inputs_embeds": self.inputs_embeds,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }


def image_placeholder_mask(input_ids: Tensor, image_token_id: int, num_tokens: int) -> Tensor:
    """(B, L) bool mask of image placeholders; every sample must hold exactly one image of N tokens."""
    mask = input_ids == image_token_id
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"prompt(s) {missing} contain no image token: put the processor's image token in every prompt "
            "(steprune prunes one image per sample)"
        )
    if bool((counts != num_tokens).any()):
        raise ValueError(
            f"image placeholders per sample {counts.tolist()} do not match the {num_tokens} visual tokens "
            "the vision tower produced per image: one image per prompt, processed by the model's processor"
        )
    return mask


def full_sequence_positions(attention_mask: Tensor) -> Tensor:
    """(B, L) 1-D positions of a left-padded batch, as HF generate builds them."""
    positions = attention_mask.long().cumsum(dim=-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def splice_kept_tokens(
    input_ids: Tensor,  # (B, L)
    attention_mask: Tensor,  # (B, L)
    positions: Tensor,  # (B, L) or (R, B, L): positions on the full sequence
    image_token_id: int,
    pad_token_id: int,
    keep_placeholder: Tensor,  # (B, N) bool: which visual tokens survive
    kept_features: Tensor,  # (B, K_max, D) features of the kept tokens, valid rows first, in index order
    kept_valid: Tensor,  # (B, K_max) bool
    embed: nn.Module,
    policy: PositionPolicy = "keep_original",
) -> SplicedInputs:
    if policy not in POSITION_POLICIES:
        raise ValueError(f"position policy must be one of {POSITION_POLICIES}, got {policy!r}")
    b, n = keep_placeholder.shape
    image_mask = image_placeholder_mask(input_ids, image_token_id, n)
    present = attention_mask.bool()
    rank = image_mask.long().cumsum(dim=1) - 1  # (B, L) which visual token a placeholder stands for
    kept_here = keep_placeholder.gather(1, rank.clamp(min=0)) & image_mask
    keep_seq = present & (~image_mask | kept_here)  # (B, L)

    counts = keep_seq.sum(dim=1)  # (B,)
    new_len = int(counts.max())
    dest = (new_len - counts).unsqueeze(1) + keep_seq.long().cumsum(dim=1) - 1  # (B, L) left-padded target
    dest = dest.masked_fill(~keep_seq, new_len)  # dropped tokens go to a scratch column

    def compact(values: Tensor, fill: int) -> Tensor:  # (..., B, L) -> (..., B, new_len)
        out = values.new_full((*values.shape[:-1], new_len + 1), fill)
        out.scatter_(-1, dest.expand_as(values), values)
        return out[..., :new_len]

    new_ids = compact(input_ids, pad_token_id)
    new_mask = compact(keep_seq.long(), 0)
    if policy == "keep_original":
        new_positions = compact(positions, 1)
    else:
        flat = full_sequence_positions(new_mask)
        new_positions = flat if positions.dim() == 2 else flat.unsqueeze(0).expand(positions.shape[0], -1, -1)

    slots = (new_ids == image_token_id) & new_mask.bool()
    embeds = embed(new_ids)  # (B, L', D)
    features = kept_features[kept_valid].to(embeds.dtype)  # (sum K_b, D), sample-major like `slots`
    if features.shape[0] != int(slots.sum()):
        raise ValueError(
            f"{features.shape[0]} kept visual features for {int(slots.sum())} kept placeholders: "
            "the pruner's keep_mask disagrees with its kept indices"
        )
    embeds = embeds.masked_scatter(slots.unsqueeze(-1), features)
    return SplicedInputs(embeds, new_mask, new_positions.contiguous(), new_ids, slots)
