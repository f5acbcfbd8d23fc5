"""The pruning contract: what a method may read, what it returns, and the protocol every method implements.

Every token-selection method in steprune — training-free or learned — receives one `PruneContext` for a
whole batch and returns one `PruneResult`. Nothing here loops over samples: kept indices are a padded
(B, K_max) tensor with a mask, so adaptive methods (different K per sample) batch like fixed ones.

    from steprune.pruners import PRUNERS
    pruner = PRUNERS.create("uniform")
    result = pruner.select(ctx)           # ctx built by a backbone adapter
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from steprune.backbones.layer_view import LayerView
    from steprune.backbones.vision_access import VisionAccess


@dataclass(frozen=True)
class PruneContext:
    """Everything a method may read to choose visual tokens for a batch.

    All tensors share the batch dimension B. Visual tokens are in row-major order over `grid`.
    """

    image_tokens: Tensor  # (B, N, D_llm) visual tokens after the projector: what the LLM consumes
    vision_features: Tensor  # (B, N, D_v) the same tokens in vision space (LLaVA: tower layer -2, CLS dropped)
    text_embeds: Tensor  # (B, L, D_llm) LLM word embeddings of the prompt (left-padded, placeholders removed)
    text_mask: Tensor  # (B, L) bool: True on real prompt tokens
    budget: int  # K, the number of visual tokens to keep (a mean target for adaptive methods)
    grid: tuple[int, int]  # (rows, cols) with rows * cols == N
    vision: VisionAccess | None = None  # lazy, explicit vision attentions / keys (see backbones.vision_access)
    text_free: bool = False  # select without reading the prompt (multi-turn use)
    generator: torch.Generator | None = None  # for seeded stochastic methods
    # per sample, per text_embeds row: the text that prompt token decodes to ("" for special tokens and padding);
    # filled only for a method with `reads_words` (MMTok's faithful keyword filter), else None
    text_pieces: tuple[tuple[str, ...], ...] | None = None

    def __post_init__(self) -> None:
        b, n, _ = self.image_tokens.shape
        if self.vision_features.shape[:2] != (b, n):
            raise ValueError(
                f"vision_features {tuple(self.vision_features.shape)} does not match image_tokens (B={b}, N={n})"
            )
        if self.text_embeds.shape[0] != b or self.text_mask.shape != self.text_embeds.shape[:2]:
            raise ValueError("text_embeds (B, L, D) and text_mask (B, L) must share B and L")
        if self.grid[0] * self.grid[1] != n:
            raise ValueError(f"grid {self.grid} does not cover N={n} visual tokens")
        check_budget(self.budget, n)
        if self.text_pieces is not None and (
            len(self.text_pieces) != b or any(len(row) != self.text_embeds.shape[1] for row in self.text_pieces)
        ):
            raise ValueError("text_pieces must hold one string per text_embeds row (B, L)")

    @property
    def batch_size(self) -> int:
        return self.image_tokens.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.image_tokens.shape[1]

    @property
    def device(self) -> torch.device:
        return self.image_tokens.device


def check_budget(budget: int, num_tokens: int) -> None:
    """Raise a clear error for a budget that cannot be honoured."""
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"budget must be an int, got {type(budget).__name__}")
    if budget <= 0 or budget > num_tokens:
        raise ValueError(f"budget must be in 1..{num_tokens} (the number of visual tokens), got {budget}")


@dataclass(frozen=True)
class PruneResult:
    """Which visual tokens survive, per sample, as a padded batch.

    `keep` rows are sorted ascending over their valid entries; padding sits at the end of a row with
    index 0 and `keep_mask` False. `merged`, when given, replaces the projector output of each kept
    token (VisionZip's contextual tokens, PruMerge+'s merged keys) in LLM space.
    """

    keep: Tensor  # (B, K_max) long
    keep_mask: Tensor  # (B, K_max) bool
    merged: Tensor | None = None  # (B, K_max, D_llm) or None
    selection_flops: float = 0.0  # FLOPs the selection itself spent, whole batch (multiply-add = 2)
    extras: dict[str, Tensor] = field(default_factory=dict)  # method-specific diagnostics (scores, stop probs)

    def __post_init__(self) -> None:
        if self.keep.shape != self.keep_mask.shape or self.keep.dim() != 2:
            raise ValueError(
                f"keep {tuple(self.keep.shape)} and keep_mask {tuple(self.keep_mask.shape)} must be (B, K)"
            )
        if self.merged is not None and self.merged.shape[:2] != self.keep.shape:
            raise ValueError(
                f"merged {tuple(self.merged.shape)} must be (B, K_max, D) with keep {tuple(self.keep.shape)}"
            )

    @property
    def lengths(self) -> Tensor:  # (B,) long: K per sample
        return self.keep_mask.sum(dim=1)

    @classmethod
    def from_indices(
        cls, indices: Tensor, merged: Tensor | None = None, selection_flops: float = 0.0, **extras: Tensor
    ) -> PruneResult:
        """Build a fixed-K result from unsorted (B, K) indices; `merged` rows follow `indices`."""
        keep, order = indices.sort(dim=1)
        if merged is not None:
            merged = merged.gather(1, order.unsqueeze(-1).expand(-1, -1, merged.shape[-1]))
        return cls(keep, torch.ones_like(keep, dtype=torch.bool), merged, selection_flops, dict(extras))

    @classmethod
    def from_mask(cls, chosen: Tensor, selection_flops: float = 0.0, **extras: Tensor) -> PruneResult:
        """Build a (possibly ragged) result from a (B, N) bool mask of chosen tokens."""
        n = chosen.shape[1]
        k_max = max(int(chosen.sum(dim=1).max()), 1)
        position = torch.arange(n, device=chosen.device).expand_as(chosen)
        # chosen tokens first, in index order; the rest sort after them
        sort_key = torch.where(chosen, position, position + n)
        keep = sort_key.argsort(dim=1)[:, :k_max]
        keep_mask = chosen.gather(1, keep)
        keep = keep.masked_fill(~keep_mask, 0)
        return cls(keep, keep_mask, None, selection_flops, dict(extras))

    @classmethod
    def keep_all(cls, batch_size: int, num_tokens: int, device: torch.device) -> PruneResult:
        keep = torch.arange(num_tokens, device=device).expand(batch_size, -1).clone()
        return cls(keep, torch.ones_like(keep, dtype=torch.bool))


@dataclass(frozen=True)
class LayerDrop:
    """An in-LLM pruning step: before decoder layer `layer`, keep the visual tokens `choose` returns.

    `choose(view)` gets a `LayerView` of the sequence entering that layer and returns (B, k) indices
    into the visual tokens still alive (positions within `view.image_positions`), any order.
    `renumber`: from this layer on, rotary positions close the gaps the drop leaves (each kept token's position
    minus the visual tokens dropped before it; decoding continues right after) instead of staying original.
    """

    layer: int
    choose: Callable[[LayerView], Tensor]
    renumber: bool = False


@runtime_checkable
class Pruner(Protocol):
    """A token-selection method. `select` runs before the LLM; in-LLM methods also return `layer_drops`."""

    name: ClassVar[str]
    reads_text: ClassVar[bool]  # whether `select` / the drops read the prompt (text-free mode changes them)
    adaptive: ClassVar[bool]  # K varies per sample (K <= budget not guaranteed == budget)

    def select(self, ctx: PruneContext) -> PruneResult: ...

    def layer_drops(self, ctx: PruneContext, num_layers: int) -> list[LayerDrop]: ...


class PrePrunerBase:
    """Default behaviour for methods that select before the LLM: no in-LLM drops."""

    name: ClassVar[str] = ""
    reads_text: ClassVar[bool] = False
    adaptive: ClassVar[bool] = False
    reads_words: bool = False  # the context must carry `text_pieces` (the prompt as decoded text)

    def layer_drops(self, ctx: PruneContext, num_layers: int) -> list[LayerDrop]:
        return []

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
