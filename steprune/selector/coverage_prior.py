"""The coverage prior: MMTok's marginal coverage gain as an input to StepPrune's pointer [beyond the paper].

    sel = StepPruneSelector(d_vision, d_text, prior="coverage")
    cover = coverage_matrix_t(image_tokens, vision_features, text, text_mask, 0.5, 0.02, 0.2)  # (B, N, R)
    sel.select(vision, text, text_mask, cover=cover)
    steprune train fit --config experiments/stepprune_world.yaml --config experiments/stepprune_removal.yaml \
        --model.prior coverage

Why (session 16): trained on the removal surrogate alone, the pointer keeps worse tokens than the training-free
methods at the same K (reports/stepprune_study_v3.md: 80.7 % retention at K 16 against MMTok 87.3 %), and it
could not even imitate MMTok's set (reports/stepprune_offset_teacher.md: imitation loss 1.71 -> 1.46 nats per
step). What MMTok computes — how much of the prompt and of the image a candidate covers that the chosen tokens do
not — is not something the encoder is given. With this prior the pointer reads it at every step:

    gain_t[j] = sum_r max(0, C[r, j] - best_t[r])          C: MMTok's coverage matrix (steprune.pruners.mmtok),
    best_{t+1} = max(best_t, C[:, a_t])                     best_1 = 0; updated with each chosen token
    logit_t[j]    += w_token * log(gain_t[j] / max_i gain_t[i] + 1e-6)     visual tokens
    logit_t[STOP] += w_stop * log(max_i gain_1[i] / max_i gain_t[i])      stop="saturation" (default): grows as
                                                                           what is left to cover shrinks
    logit_t[STOP] += -w_stop * log(max_i gain_t[i])                        stop="absolute": stop once the next
                                                                           token would add less than a fixed amount

w_token and w_stop are learned scalars (initialised 4 and 1). With the pointer's own logits flat, the argmax is
MMTok's greedy; the STOP term is a coverage-saturation stopping rule whose threshold the STOP offset sets, so K
follows how much an image holds. What training learns is the correction to both. The prior adds no gradient path
to the coverage matrix (it is an input, computed from the frozen model's tokens).

Which STOP term (session 17, `reports/stepprune_coverage_prior_rates.md` §3, MMTok's greedy with each rule at the
same calibrated mean K on 2,000 test questions): "absolute" retains +1.3 [+0.1, +2.5] points more than
"saturation" at K* 48 and -0.2 [-1.5, +1.1] at K* 16, where its rho(K, objects) is 0.67 against 0.58. f is
normalised (at most 1 + alpha per image), so one threshold on the gain means the same on every image: the rule
that maximises the summed coverage for a total budget. "saturation" stays the class default (the v3 runs used it);
`make train` uses "absolute" since session 22 (experiments/stepprune_prior_absolute_d32.yaml; on base v5 untrained
+1.3 / -0.8 / +1.1 points over saturation at K* 16 / 32 / 48, reports/stepprune_coverage_prior_rates.md §7).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Prior = Literal["none", "coverage"]
PRIORS: tuple[str, ...] = ("none", "coverage")
PriorStop = Literal["saturation", "absolute"]
PRIOR_STOPS: tuple[str, ...] = ("saturation", "absolute")
GAIN_EPS = 1e-6


class CoveragePrior(nn.Module):
    """The learned weights of the coverage prior and its per-step state (the coverage of the chosen tokens)."""

    def __init__(self, token_weight: float = 4.0, stop_weight: float = 1.0, stop: PriorStop = "saturation") -> None:
        super().__init__()
        if stop not in PRIOR_STOPS:
            raise ValueError(f"the coverage prior's stop must be one of {PRIOR_STOPS}, got {stop!r}")
        self.stop = stop
        self.token_weight = nn.Parameter(torch.tensor(float(token_weight)))
        self.stop_weight = nn.Parameter(torch.tensor(float(stop_weight)))

    @staticmethod
    def check(cover: Tensor, h: Tensor) -> None:
        """Raise a clear error when `cover` (B, N, R) does not describe the N tokens of h (B, N, D)."""
        if cover.dim() != 3 or cover.shape[:2] != h.shape[:2]:
            raise ValueError(
                f"the coverage prior needs a coverage matrix (B, N, R) for the {h.shape[1]} tokens of a batch of "
                f"{h.shape[0]}, got shape {tuple(cover.shape)} (steprune.pruners.mmtok.coverage_matrix_t)"
            )

    @staticmethod
    def gains(cover: Tensor, best: Tensor) -> Tensor:
        """(B, N) marginal gains of every candidate; cover (B, N, R), best (B, R)."""
        return (cover - best[:, None, :]).clamp_min(0).sum(dim=-1)

    def logits(self, cover: Tensor, best: Tensor, first_max: Tensor | None) -> tuple[Tensor, Tensor]:
        """The additive logits (B, N+1) at the current state, and the first step's max gain (B,)."""
        gain = self.gains(cover, best)  # (B, N)
        top = gain.max(dim=1).values.clamp_min(1e-12)  # (B,)
        first = top if first_max is None else first_max
        token = self.token_weight.to(cover.dtype) * (gain / top[:, None] + GAIN_EPS).log()  # (B, N)
        if self.stop == "absolute":  # (B,) large once the best remaining gain is small, on the same scale everywhere
            stop = -self.stop_weight.to(cover.dtype) * top.log()
        else:  # saturation: relative to the image's first gain
            stop = self.stop_weight.to(cover.dtype) * (first.log() - top.log())
        return torch.cat([token, stop[:, None]], dim=1), first

    @staticmethod
    def update(cover: Tensor, best: Tensor, fed: Tensor) -> Tensor:
        """best after feeding `fed` (B,) long (index N = STOP adds nothing)."""
        n = cover.shape[1]
        rows = cover.gather(1, fed.clamp(max=n - 1)[:, None, None].expand(-1, 1, cover.shape[2])).squeeze(1)
        return torch.where((fed < n)[:, None], torch.maximum(best, rows), best)  # (B, R)
