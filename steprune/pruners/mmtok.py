"""MMTok (ICLR 2026): choose the visual tokens that best *cover* the prompt and the whole image.

    PRUNERS.create("mmtok", tau_tv=0.01).select(ctx)     # tau_tv=0.01 is the authors' Qwen2.5-VL setting

Where it runs: before the LLM, on the projected tokens x = ctx.image_tokens (B, N, D_llm), the same
tokens in vision space x_c = ctx.vision_features (LLaVA: tower layer -2; Qwen2.5-VL: the merged tokens,
so x_c = x there) and the prompt's word embeddings z = ctx.text_embeds rows where ctx.text_mask.

Score. All rows L2-normalised; with m the number of real prompt tokens of the sample,
    P = softmax(z x^T / tau_tv, over vision) / m          (m, N): text-vision coverage
    Q = softmax(x_c x_c^T / tau_vv, over vision) / N      (N, N): vision-vision coverage
    C = [P ; alpha * Q],   f(S) = sum_rows max_{j in S} C[row, j]  (monotone submodular).
Budget: exactly K = ctx.budget tokens by the greedy: best = 0; K times take the not-yet-chosen j with the
largest gain sum_rows max(0, C[row, j] - best[row]) (ties: lowest index), best = max(best, C[:, j]).
Greedy is within (1 - 1/e) of the optimum. Returned in spatial order; `extras["coverage"]` = f(S).
Padded prompt rows are zeroed, so they contribute nothing. Text-free mode: C = Q (vision coverage only).

Defaults: alpha 0.5, tau_tv 0.02 (LLaVA; the authors use 0.01 on Qwen2.5-VL — pass `tau_tv=0.01`),
tau_vv 0.2.

Faithful mode (`faithful=True`, opt-in; the same option name as the other methods): the text rows are only the
question's keywords, as the authors' LLaVA path (`steprune.pruners.keywords`: benchmark suffix prompts and their
stop-words removed); it reads `ctx.text_pieces` (the prompt as decoded text, filled by `PrunedVLM` from its
processor's tokenizer when a method `reads_words`). A sample with no keyword row falls back to all its rows.

Deliberate differences from the authors' code:
- By default we use every real prompt token (chat-template tokens included) where they keep only the
  question's keywords; `faithful=True` keeps the keyword rows of the prompt. Even then their words are
  re-tokenised one by one (no BOS), ours are the prompt's own tokens in context (a word split differently in
  context embeds differently), and the template's role words are dropped by us. Their Qwen2.5-VL path embeds
  "Question: " + the whole question unless `clean_text` is set; faithful mode applies the keyword filter there too.
- Their selection runs one sample at a time; ours is batched (one loop over the K greedy steps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from steprune.pruners.contract import PrePrunerBase, PruneContext, PruneResult
from steprune.pruners.keywords import keyword_rows
from steprune.pruners.registry import PRUNERS


def coverage_parts(
    image_tokens: Tensor,
    vision_features: Tensor,
    text_embeds: Tensor | None,
    text_mask: Tensor | None,
    alpha: float,
    tau_tv: float,
    tau_vv: float,
) -> list[Tensor]:
    """The row blocks of C: [P (B, L, N), alpha * Q (B, N, N)], or [Q] when `text_embeds` is None (text-free)."""
    n = image_tokens.shape[1]
    xc = F.normalize(vision_features.float(), dim=-1)  # (B, N, D_v)
    q = (xc @ xc.transpose(1, 2) / tau_vv).softmax(dim=-1) / n  # (B, N, N)
    if text_embeds is None or text_mask is None:
        return [q]
    x = F.normalize(image_tokens.float(), dim=-1)  # (B, N, D_llm)
    z = F.normalize(text_embeds.float(), dim=-1)  # (B, L, D_llm)
    real = text_mask.float()  # (B, L)
    m = real.sum(dim=1).clamp_min(1.0)  # (B,)
    p = (z @ x.transpose(1, 2) / tau_tv).softmax(dim=-1) * (real / m.unsqueeze(1)).unsqueeze(-1)  # (B, L, N)
    return [p, alpha * q]


def coverage_matrix(*args, **kwargs) -> Tensor:
    """C = [P ; alpha * Q] (B, L + N, N), or Q (B, N, N) when `text_embeds` is None (text-free)."""
    return torch.cat(coverage_parts(*args, **kwargs), dim=1)


def coverage_matrix_t(*args, **kwargs) -> Tensor:
    """C transposed, (B, N, R) contiguous: one row of coverage values per candidate (what the greedy reads)."""
    return torch.cat([part.transpose(1, 2) for part in coverage_parts(*args, **kwargs)], dim=2)


def default_coverage_t(
    image_tokens: Tensor, vision_features: Tensor, text_embeds: Tensor | None, text_mask: Tensor | None
) -> Tensor:
    """`coverage_matrix_t` at MMTok's defaults (alpha 0.5, tau_tv 0.02, tau_vv 0.2): (B, N, R). What StepPrune's
    coverage prior reads (`steprune.selector.coverage_prior`), in training and at inference alike."""
    return coverage_matrix_t(image_tokens, vision_features, text_embeds, text_mask, 0.5, 0.02, 0.2)


def dense_greedy_max_coverage(cover: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The original greedy on cover (B, R, N): every gain recomputed at every step. Two (B, R, N) temporaries per
    step and K full passes over C; kept as the reference the lazy greedy is tested and benchmarked against."""
    b, r, n = cover.shape
    best = cover.new_zeros(b, r)  # (B, R) coverage of each row so far
    taken = torch.zeros(b, n, dtype=torch.bool, device=cover.device)
    picks = []
    for _ in range(k):
        gain = (cover - best.unsqueeze(-1)).clamp_min(0).sum(dim=1)  # (B, N)
        j = gain.masked_fill(taken, float("-inf")).argmax(dim=1)  # (B,)
        picks.append(j)
        taken.scatter_(1, j.unsqueeze(1), True)
        best = torch.maximum(best, cover.gather(2, j.view(b, 1, 1).expand(b, r, 1)).squeeze(-1))
    return torch.stack(picks, dim=1), best.sum(dim=1)


def _gains(cover_t: Tensor, best: Tensor, samples: Tensor, columns: Tensor) -> Tensor:
    """Exact gains sum_r max(0, C[r, j] - best[r]) of the candidates `columns` (P, M) of the samples `samples`
    (P,), whose `best` (P, R) is given: (P, M).

    Each gain is an inner reduction over its own contiguous row of `cover_t`, so its bits depend on that row and
    `best` only (not on which other candidates are evaluated with it): gains are reproducible, and monotone
    non-increasing in `best` in floating point too (rounding is monotone), which the lazy greedy relies on."""
    rows = cover_t[samples.unsqueeze(1), columns]  # (P, M, R): only the candidates' rows are read
    return (rows - best.unsqueeze(1)).clamp_min_(0).sum(dim=2)


def greedy_max_coverage_t(
    cover_t: Tensor, k: int, refresh: int = 16, chunk: int = 256, dense_below: int = 1 << 20
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact lazy greedy maximisation of f(S) = sum_rows max_{j in S} C[row, j] on cover_t = C^T (B, N, R) >= 0.

    Returns the picks (B, k) in pick order, f of the picked set (B,) and the gains computed per sample (B,) (the
    dense greedy computes k * N). The same greedy as
    `dense_greedy_max_coverage` (largest gain, ties to the lowest index), evaluated lazily: every candidate keeps
    an upper bound on its gain (its last computed gain: gains only fall as `best` rises, f being submodular); a
    step takes the largest bound (lowest index among equal ones) once that bound is fresh (computed at the
    current `best`), else recomputes the `refresh` largest stale bounds (that one among them) of the samples not yet
    settled and looks again.
    A fresh maximal bound is the exact argmax: any other candidate's gain is at most its bound. Memory per step:
    (B, refresh, R), never a second (B, R, N); the initial gains are computed `chunk` candidates at a time.
    A matrix of at most `dense_below` entries per sample (N = 576: R * N = 385k) recomputes every gain at every
    step instead, which beats the bookkeeping there; its gains are the same bits (the same row reductions), so
    the picks do not depend on which way they were found.
    """
    b, n, r = cover_t.shape
    best = cover_t.new_zeros(b, r)  # (B, R) coverage of each row so far
    rows = torch.arange(b, device=cover_t.device)
    bound = torch.cat(
        [
            _gains(cover_t, best, rows, torch.arange(s, min(s + chunk, n), device=cover_t.device).expand(b, -1))
            for s in range(0, n, chunk)
        ],
        dim=1,
    )  # (B, N) exact at best = 0
    fresh = torch.ones(b, n, dtype=torch.bool, device=cover_t.device)
    refresh = min(refresh, n)
    evaluated = torch.full((b,), n, dtype=torch.long, device=cover_t.device)
    picks = []
    dense = n * r <= dense_below
    for step in range(k):
        if dense and step:  # every gain again, at once: (B, N, R) once per step
            chosen = bound == float("-inf")
            bound = (cover_t - best.unsqueeze(1)).clamp_min_(0).sum(dim=2).masked_fill_(chosen, float("-inf"))
            fresh.fill_(True)
            evaluated += n
        while True:
            j = bound.argmax(dim=1)  # (B,) first maximum: lowest index among equal bounds
            stale = ~fresh[rows, j]
            if not bool(stale.any()):
                break
            pending = rows[stale]
            old = bound[pending]
            # the `refresh` largest stale bounds, j first (equal bounds must not crowd it out)
            key = old.masked_fill(fresh[pending], float("-inf")).scatter_(1, j[pending, None], float("inf"))
            columns = key.topk(refresh, dim=1).indices  # (P, refresh)
            gains = _gains(cover_t, best[pending], pending, columns)
            gains = gains.masked_fill(old.gather(1, columns) == float("-inf"), float("-inf"))  # chosen stay out
            bound[pending] = old.scatter(1, columns, gains)
            evaluated[pending] += refresh
            fresh[pending] = fresh[pending].scatter(1, columns, True)
        picks.append(j)
        bound[rows, j] = float("-inf")  # never chosen again
        best = torch.maximum(best, cover_t[rows, j])  # (B, R)
        fresh.zero_()  # every bound is now an upper bound only
    return torch.stack(picks, dim=1), best.sum(dim=1), evaluated


def greedy_max_coverage(cover: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Greedy maximisation of f(S) = sum_rows max_{j in S} cover[:, row, j] for cover (B, R, N) >= 0.

    Returns the picks (B, k) in pick order and f of the picked set (B,). Ties go to the lowest index; a chosen
    token is never chosen again. The lazy greedy (`greedy_max_coverage_t`) on the transposed matrix.
    """
    picks, value, _ = greedy_max_coverage_t(cover.transpose(1, 2).contiguous(), k)
    return picks, value


@PRUNERS.register("mmtok")
class MMTokPruner(PrePrunerBase):
    """Greedy multimodal coverage maximisation; see the module docstring."""

    reads_text = True

    def __init__(self, alpha: float = 0.5, tau_tv: float = 0.02, tau_vv: float = 0.2, faithful: bool = False) -> None:
        if tau_tv <= 0 or tau_vv <= 0:
            raise ValueError(f"temperatures must be positive, got tau_tv={tau_tv}, tau_vv={tau_vv}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self.tau_tv = tau_tv
        self.tau_vv = tau_vv
        self.faithful = faithful

    @property
    def reads_words(self) -> bool:  # faithful mode reads ctx.text_pieces
        return self.faithful

    def select(self, ctx: PruneContext) -> PruneResult:
        text, mask = (None, None) if ctx.text_free else (ctx.text_embeds, ctx.text_mask)
        if self.faithful and mask is not None:
            if ctx.text_pieces is None:
                raise ValueError("MMTok faithful=True needs ctx.text_pieces (build the context with PrunedVLM)")
            words = torch.tensor([keyword_rows(row) for row in ctx.text_pieces], device=mask.device) & mask
            mask = torch.where(words.any(dim=1, keepdim=True), words, mask)  # (B, L) keyword rows
        cover_t = coverage_matrix_t(
            ctx.image_tokens, ctx.vision_features, text, mask, self.alpha, self.tau_tv, self.tau_vv
        )  # (B, N, R): C transposed
        picks, value, evaluated = greedy_max_coverage_t(cover_t, ctx.budget)
        b, n, r = cover_t.shape
        d_v, d_llm = ctx.vision_features.shape[-1], ctx.image_tokens.shape[-1]
        flops = 2.0 * b * n * n * d_v + 2.0 * b * (r - n) * n * d_llm + 3.0 * r * float(evaluated.sum())
        return PruneResult.from_indices(picks, selection_flops=flops, coverage=value)
