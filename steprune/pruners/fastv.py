"""FastV (Chen et al., ECCV 2024): drop the visual tokens the last prompt token ignores, inside the LLM.

Where: before decoder layer K (default K=2, given for the 32-layer LLaVA-1.5-7B and scaled to the model's
depth, see `scale_layer`). `select` keeps every token; the one `LayerDrop` does the pruning.

Score: attention of layer K-1, mean over heads, of the **last prompt token's row** over the visual tokens
(`LayerView.last_token_attention(K-1)` gathered at `image_positions`). The row is computed explicitly from
that layer's q/k with RoPE, causal and padding masked; the model itself keeps SDPA.

Budget: exactly `ctx.budget` visual tokens survive from layer K on (top-`budget` scores; ties go to the
lower token index through a stable descending sort). Kept tokens keep their original positions (the hook
session slices the rotary embeddings).

    vlm = PrunedVLM(model, processor, method="fastv", budget=64)            # K=2 of 32, scaled
    vlm = PrunedVLM(model, processor, method="fastv", budget=64, layer=3, reference_layers=None)  # K=3

Text-free mode (`ctx.text_free`): the query is the **last visual token** instead of the last prompt
token. Under causal attention, the visual tokens and everything before them never see the text that
follows the image, so the choice is independent of the question (and of any later turn) whenever the
image precedes the question, as in every chat template here.

Differences from the authors' code (FastV's `modeling_llama.py`):
- they run layer K-1 in eager attention with `output_attentions` and read the full (S, S) map; we compute
  one attention row from q/k, so SDPA / flash attention stay on everywhere;
- they locate the image span with hard-coded offsets (SYS_LENGTH=35, IMAGE_TOKEN_LENGTH=576) and batch
  size 1; we use the hook session's per-sample `image_positions` on a left-padded batch;
- they keep a ratio R of the image tokens; ours keeps the budget, like the papers' comparison tables;
- K=2 is scaled with the model's depth (`round(K * L / 32)`, clamped to 1..L-1); pass
  `reference_layers=None` to use `layer` as an absolute index.
"""

from __future__ import annotations

import torch
from torch import Tensor

from steprune.backbones.layer_view import LayerView
from steprune.pruners.contract import LayerDrop, PruneContext, PruneResult
from steprune.pruners.registry import PRUNERS


def check_layer(layer: int, depth: int | None, what: str) -> None:
    """Refuse a drop layer outside 1..depth-1 (never clamp a layer the user named into range)."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int, got {type(layer).__name__} {layer!r}")
    if layer < 1 or (depth is not None and layer >= depth):
        top = f"1..{depth - 1}" if depth is not None else ">= 1"
        raise ValueError(
            f"layer={layer} is outside {top} {what}; pass a layer in range (reference_layers=None makes `layer` "
            "an absolute index into this LLM, otherwise it is given on the 32-layer LLaVA-1.5-7B scale)"
        )


def scale_layer(layer: int, num_layers: int, reference_layers: int | None = 32) -> int:
    """A layer index given for a `reference_layers`-deep LLM, on a `num_layers`-deep one, in 1..L-1.

    Only the rounding of a scaled index is clamped; a layer outside the reference (or, absolute, outside this
    LLM) is refused."""
    if num_layers < 2:
        raise ValueError(f"in-LLM pruning needs an LLM with at least 2 layers, got {num_layers}")
    if reference_layers is None:
        check_layer(layer, num_layers, f"for this {num_layers}-layer LLM")
        return layer
    check_layer(layer, reference_layers, f"of the {reference_layers}-layer reference")
    return min(max(round(layer * num_layers / reference_layers), 1), num_layers - 1)


def top_indices(scores: Tensor, k: int) -> Tensor:
    """(B, k) indices of the k largest scores per row; ties go to the lower index (stable sort)."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


@PRUNERS.register("fastv")
class FastVPruner:
    """Drop visual tokens before layer K by the last prompt token's attention at layer K-1."""

    reads_text = True
    adaptive = False

    def __init__(self, layer: int = 2, reference_layers: int | None = 32) -> None:
        check_layer(layer, reference_layers, f"where FastV prunes (reference_layers={reference_layers})")
        self.layer = layer
        self.reference_layers = reference_layers

    def select(self, ctx: PruneContext) -> PruneResult:
        return PruneResult.keep_all(ctx.batch_size, ctx.num_tokens, ctx.device)

    def layer_drops(self, ctx: PruneContext, num_layers: int) -> list[LayerDrop]:
        layer = scale_layer(self.layer, num_layers, self.reference_layers)
        budget, text_free = ctx.budget, ctx.text_free

        def choose(view: LayerView) -> Tensor:
            return top_indices(self.scores(view, layer - 1, text_free), budget)

        return [LayerDrop(layer, choose)]

    @staticmethod
    def scores(view: LayerView, layer: int, text_free: bool = False) -> Tensor:
        """(B, n) attention of the query token at `layer` (mean over heads) over the alive visual tokens."""
        if text_free:
            query = view.image_positions[:, -1:]  # (B, 1) the last visual token
            rows = view.attention_rows(layer, query)[:, :, 0]  # (B, H, S)
        else:
            rows = view.last_token_attention(layer)  # (B, H, S)
        b, h, s = rows.shape
        view.flops[0] += float(b * h * s)  # the head mean (the q/k work is counted by the view)
        return rows.mean(dim=1).gather(1, view.image_positions)  # (B, n)

    def __repr__(self) -> str:
        return f"FastVPruner(layer={self.layer}, reference_layers={self.reference_layers})"
