"""DART (Wen et al., 2025): keep the visual tokens that *duplicate* least the pivot tokens, inside the LLM.

Where: before decoder layer K (default K=2, given for the 32-layer LLaVA-1.5-7B and scaled to the model's
depth like FastV's). `select` keeps every token; the one `LayerDrop` does the pruning. No attention weights.

Score / selection, per sample, vectorised over the batch:
1. Pivots by the L1 norm of the layer K-1 keys (`LayerView.keys(K-1)`: RoPE'd, GQA heads repeated; the
   norm is taken over heads x head_dim, i.e. over the concatenated heads as the authors do — repeating
   GQA heads scales every token's norm the same way per KV head and changes no ranking):
   `image_pivots` (4) visual tokens and `text_pivots` (4) prompt tokens that come **after** the image
   (`view.text_positions` past the last visual token: the question and the answer prefix).
2. Features: the decoder's final `norm` applied to the hidden states entering layer K, L2-normalised.
3. Pivots are visited in sequence order (image pivots, then text pivots). Each pivot takes the visual
   tokens **least** cosine-similar to it from a shrinking pool (visual tokens neither pivots nor taken by
   an earlier pivot). Ties go to the lower token index (stable sort).

Budget (exactly `budget` visual tokens survive): the image pivots are kept and count towards it; the text
pivots are text and always stay. The remaining `budget - image_pivots` slots are split evenly over all
pivots, the remainder going one each to the first pivots. With budget < 4 only `budget` image pivots.

Text-free mode (`ctx.text_free`): no text pivots; the image pivots share all slots. Under causal
attention the visual tokens' keys and hidden states never see the text after the image, so the choice
is then independent of the question.

Faithful mode (`faithful=True`, opt-in; the same option name as the other methods): the authors' pivot order and
counts — the pivots are visited in the iteration order of the Python `set` of their sequence positions (CPython's
order for those ints, taken on the unpadded sequence, i.e. positions minus the sample's left padding; their
positions count their own LLaVA prompt, so the order matches theirs only for the same prompt layout) and each
pivot takes M // (number of pivots) tokens, so the image pivots + 8 * (M // 8) tokens survive (capped at N).

Differences from the authors' code (`get_retained_image_token`, LLaVA `modeling_llama.py`; `faithful=True` undoes
the first two):
- they keep `4 + 8 * (M // 8)` image tokens (image pivots on top of M // 8 per pivot); we keep exactly M;
- they iterate the pivots as a Python `set` (incidental order); we visit them in sequence order;
- hard-coded image offsets and batch size 1 (`any_states[0]`) become per-sample positions on a padded batch;
  if some sample has fewer than 4 prompt tokens after the image, every sample uses that smaller count
  (in-LLM drops keep one count per batch);
- K=2 is scaled with the model's depth (`reference_layers=None` makes `layer` absolute).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from steprune.backbones.layer_view import LayerView
from steprune.pruners.contract import LayerDrop, PruneContext, PruneResult
from steprune.pruners.fastv import check_layer, scale_layer, top_indices
from steprune.pruners.registry import PRUNERS


def pivot_shares(budget: int, image_pivots: int, text_pivots: int) -> list[int]:
    """Visual tokens each pivot adds (image pivots first), so that pivots + shares == budget."""
    pivots = image_pivots + text_pivots
    base, rem = divmod(budget - image_pivots, pivots)
    return [base + (j < rem) for j in range(pivots)]


def set_order(sequence: Tensor) -> Tensor:
    """(B, P) long: per sample, the pivots (given by distinct sequence positions) in the order CPython iterates
    `set(positions)` — the authors' `for item in list(indices_set)`."""
    rows = []
    for values in sequence.tolist():
        rows.append([values.index(v) for v in set(values)])
    return torch.tensor(rows, dtype=torch.long, device=sequence.device)


def authors_shares(budget: int, num_tokens: int, image_pivots: int, pivots: int) -> list[int]:
    """The authors' M // pivots tokens per pivot, trimmed from the last pivot on so that at most N survive."""
    shares = [budget // pivots] * pivots
    excess = image_pivots + sum(shares) - num_tokens
    for j in range(pivots - 1, -1, -1):
        cut = min(max(excess, 0), shares[j])
        shares[j] -= cut
        excess -= cut
    return shares


def least_similar_greedy(features: Tensor, pivots: Tensor, shares: list[int], taken: Tensor) -> Tensor:
    """Each pivot (in order) takes its `shares[j]` least cosine-similar tokens still in the pool.

    features (B, n, D) and pivots (B, P, D) L2-normalised; taken (B, n) bool, updated in place.
    Returns the chosen token indices (B, sum(shares)).
    """
    chosen = []
    for j, share in enumerate(shares):  # inherently sequential: the pool shrinks
        if share == 0:
            continue
        cos = (features @ pivots[:, j].unsqueeze(-1)).squeeze(-1)  # (B, n)
        cos = cos.masked_fill(taken, float("inf"))
        pick = torch.sort(cos, dim=1, stable=True).indices[:, :share]  # (B, share) least similar first
        taken.scatter_(1, pick, True)
        chosen.append(pick)
    return torch.cat(chosen, dim=1) if chosen else features.new_zeros(features.shape[0], 0, dtype=torch.long)


@PRUNERS.register("dart")
class DARTPruner:
    """Drop duplicated visual tokens before layer K: keep those least similar to 8 key-norm pivots."""

    reads_text = True
    adaptive = False

    def __init__(
        self,
        layer: int = 2,
        image_pivots: int = 4,
        text_pivots: int = 4,
        reference_layers: int | None = 32,
        faithful: bool = False,
    ) -> None:
        if layer < 1 or image_pivots < 1 or text_pivots < 0:
            raise ValueError(
                f"need layer >= 1, image_pivots >= 1, text_pivots >= 0; got {layer}, {image_pivots}, {text_pivots}"
            )
        check_layer(layer, reference_layers, f"where DART prunes (reference_layers={reference_layers})")
        self.layer = layer
        self.image_pivots = image_pivots
        self.text_pivots = text_pivots
        self.reference_layers = reference_layers
        self.faithful = faithful

    def select(self, ctx: PruneContext) -> PruneResult:
        return PruneResult.keep_all(ctx.batch_size, ctx.num_tokens, ctx.device)

    def layer_drops(self, ctx: PruneContext, num_layers: int) -> list[LayerDrop]:
        layer = scale_layer(self.layer, num_layers, self.reference_layers)
        budget = ctx.budget
        text_pivots = 0 if ctx.text_free else self.text_pivots
        return [LayerDrop(layer, lambda view: self.choose(view, layer, budget, text_pivots))]

    def choose(self, view: LayerView, layer: int, budget: int, text_pivots: int) -> Tensor:
        """(B, budget) indices into `view.image_positions`."""
        positions = view.image_positions  # (B, n)
        b, n = positions.shape
        budget = min(budget, n)
        keys = view.keys(layer - 1)  # (B, H, S, dh)
        norms = keys.float().abs().sum(dim=(1, 3))  # (B, S) L1 over heads x head_dim
        s = norms.shape[1]
        image_pivots = min(self.image_pivots, budget)
        image_pivot = top_indices(norms.gather(1, positions), image_pivots)  # (B, P_i) into the visual tokens
        image_pivot = image_pivot.sort(dim=1).values  # sequence order
        # prompt tokens after the image span
        after = torch.arange(s, device=norms.device).view(1, -1) > positions[:, -1:]  # (B, S)
        text = view.text_positions & after
        text_pivots = min(text_pivots, int(text.sum(dim=1).min()))
        text_pivot = top_indices(norms.masked_fill(~text, float("-inf")), text_pivots).sort(dim=1).values

        norm = view.decoder.norm
        hidden = view.hidden_states  # (B, S, D) entering `layer`
        d = hidden.shape[-1]
        image_feat = F.normalize(norm(hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, d))).float(), dim=-1)
        text_feat = F.normalize(norm(hidden.gather(1, text_pivot.unsqueeze(-1).expand(-1, -1, d))).float(), dim=-1)
        image_pivot_feat = image_feat.gather(1, image_pivot.unsqueeze(-1).expand(-1, -1, d))
        pivots = torch.cat([image_pivot_feat, text_feat], dim=1)  # (B, P, D)

        taken = torch.zeros(b, n, dtype=torch.bool, device=positions.device)
        taken.scatter_(1, image_pivot, True)
        shares = pivot_shares(budget, image_pivots, text_pivots)
        if self.faithful:
            pad = (~view.valid).long().sum(dim=1, keepdim=True)  # (B, 1) left padding
            sequence = torch.cat([positions.gather(1, image_pivot), text_pivot], dim=1) - pad  # (B, P) unpadded
            pivots = pivots.gather(1, set_order(sequence).unsqueeze(-1).expand(-1, -1, d))
            shares = authors_shares(budget, n, image_pivots, image_pivots + text_pivots)
        picked = least_similar_greedy(image_feat, pivots, shares, taken)  # (B, budget - P_i)
        # FLOPs beyond the k projection the view counts: key L1 norms, norm + normalise, cosines
        h, dh = keys.shape[1], keys.shape[3]
        steps = sum(map(bool, shares))
        view.flops[0] += float(b * s * h * dh + 6 * b * (n + text_pivots) * d + 2 * b * n * d * steps)
        return torch.cat([image_pivot, picked], dim=1)

    def __repr__(self) -> str:
        return (
            f"DARTPruner(layer={self.layer}, image_pivots={self.image_pivots}, text_pivots={self.text_pivots}, "
            f"reference_layers={self.reference_layers}, faithful={self.faithful})"
        )
