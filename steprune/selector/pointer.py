"""StepPrune's pointer decoder: the memory with the learned STOP and the selection loop (methods.md §1.1.2-3, §1.2).

One visual token is chosen per step, conditioned on the tokens chosen before; choosing STOP (index N of
the memory) ends a sample's episode, so K is decided per input.

    dec = PointerDecoder(d_model=256, num_layers=2, num_heads=8)
    out = dec(h, t_max=64, tau=1.0)        # h: (B, N, D) encoder output
    out.chosen[out.chosen_mask]            # chosen visual tokens in choice order; out.lengths = K per sample

The loop is the one of methods.md §1.2, batched: samples that have chosen STOP keep running (their
action is forced to STOP, so they mark nothing) until every sample stopped or T_max steps ran; their
later steps carry `step_valid = False` and are ignored. Each step runs one new query through the layers
with a key/value cache of the earlier steps' self-attention.

Training may ask for the *continuation* (`continue_after_stop=True`): every sample runs all T_max steps, and
each step feeds back its best visual token even where STOP won, so the steps after a sample's STOP show
what it would have chosen had it gone on. The hard selection is unchanged — before a sample's first STOP
the best visual token is the argmax, so the trajectory up to it is exactly the loop above — and `horizon`
marks all T_max steps, over which the surrogate sums `A_t` (methods.md §1.4: E[K] = sum_{t=1..T_max} A_t).

Choices where the specification is open:
* The pointer projection W_p is single-head and bias-free: `u_t = (W_q LN(h_t)) . (W_k M)^T / sqrt(D)`,
  with h_t the last layer's output for the current query after a final LayerNorm.
* Cross-attention attends to all of M (chosen tokens included); the log-space mask acts on the pointer
  logits only. STOP is masked only while a sample has chosen fewer than `min_k` tokens (the floor on K:
  an image question is never answered from no image); `min_k=0` leaves the loop exactly as specified.
* `stop_offset` (delta) is added to the STOP logit at every step: the calibration knob that sets the mean K
  at inference (a larger delta stops earlier; mean K is monotone in it). 0 in training.
* `explore=True` (training, removal surrogate) samples each action from pi_t instead of taking the argmax.
* No step (position) embedding in the decoder: conditioning comes from the causal attention over the
  chosen embeddings themselves.
* `coverage_prior=True` (beyond the paper, `steprune.selector.coverage_prior`): the forward takes MMTok's
  coverage matrix `cover` (B, N, R) and adds, at every step, the learned multiple of the log marginal coverage
  gain to the visual logits and a coverage-saturation term to STOP; the gains follow the tokens fed back. W_q then
  starts at zero (a zero-initialised residual: the untrained loop is the prior's policy, training adds to it).
* q_0 and s are initialised with unit-variance entries, the scale of the LayerNormed memory H.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from steprune.selector.coverage_prior import CoveragePrior, PriorStop
from steprune.selector.encoder import MLP


@dataclass(frozen=True)
class PointerOutput:
    """The selection trajectory of a batch. T = steps actually run (<= T_max)."""

    actions: Tensor  # (B, T) long: the hard choice per step; N = STOP (also forced after a sample stopped)
    pi: Tensor  # (B, T, N+1) pointer distributions softmax((u_t + mask_t) / tau), differentiable
    step_valid: Tensor  # (B, T) bool: the sample was still running at this step (its STOP step included)
    chosen: Tensor  # (B, T_max) long: chosen visual tokens in choice order, padded with 0
    chosen_mask: Tensor  # (B, T_max) bool: True on real entries of `chosen`
    lengths: Tensor  # (B,) long: K, visual tokens chosen before STOP (or T_max)
    horizon: Tensor  # (B, T) bool: steps the alive-weighted surrogate sums over (step_valid, or all with continuation)

    @property
    def num_tokens(self) -> int:
        return self.pi.shape[-1] - 1


def check_loop_args(n: int, t_max: int, tau: float, min_k: int) -> None:
    """Raise a clear error for loop arguments no selection over N = `n` tokens can honour."""
    if isinstance(t_max, bool) or not isinstance(t_max, int) or not 1 <= t_max <= n:
        raise ValueError(f"t_max must be an int in 1..N={n} (a token is never chosen twice), got {t_max!r}")
    if not tau > 0:
        raise ValueError(f"the pointer temperature tau must be > 0, got {tau}")
    if isinstance(min_k, bool) or not isinstance(min_k, int) or not 0 <= min_k <= t_max:
        raise ValueError(f"min_k must be an int in 0..t_max={t_max}, got {min_k!r}")


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer for one new query: cached causal self-attention, cross-attention to M, MLP."""

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm_self = nn.LayerNorm(d_model)
        self.self_qkv = nn.Linear(d_model, 3 * d_model)
        self.self_out = nn.Linear(d_model, d_model)
        self.norm_cross = nn.LayerNorm(d_model)
        self.cross_q = nn.Linear(d_model, d_model)
        self.cross_kv = nn.Linear(d_model, 2 * d_model)
        self.cross_out = nn.Linear(d_model, d_model)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio)

    def _heads(self, x: Tensor) -> Tensor:  # (B, S, D) -> (B, H, S, D/H)
        b, s, d = x.shape
        return x.view(b, s, self.num_heads, d // self.num_heads).transpose(1, 2)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of M, computed once per episode: 2 x (B, H, N+1, D/H)."""
        k, v = self.cross_kv(memory).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def step_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The current query's self-attention q, k, v: 3 x (B, H, 1, D/H)."""
        q, k, v = (self._heads(t) for t in self.self_qkv(self.norm_self(x))[:, None].chunk(3, dim=-1))
        return q, k, v

    def step_rest(self, x: Tensor, a: Tensor, memory_kv: tuple[Tensor, Tensor]) -> Tensor:
        """The layer after its self-attention output a (B, H, 1, D/H): residual, cross-attention to M, MLP."""
        b, d = x.shape
        x = x + self.self_out(a.transpose(1, 2).reshape(b, d))
        q = self._heads(self.cross_q(self.norm_cross(x))[:, None])
        c = F.scaled_dot_product_attention(q, *memory_kv)  # (B, H, 1, D/H)
        x = x + self.cross_out(c.transpose(1, 2).reshape(b, d))
        return x + self.mlp(self.norm_mlp(x))

    def step(
        self, x: Tensor, cache: tuple[Tensor, Tensor] | None, memory_kv: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = self.step_qkv(x)  # x: (B, D), the current query only
        if cache is not None:  # keys/values of the earlier steps: (B, H, t-1, D/H)
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        # one query over the steps so far (itself included): causal by construction, no mask needed
        a = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, D/H)
        return self.step_rest(x, a, memory_kv), (k, v)


class PointerDecoder(nn.Module):
    """Learned START q_0 and STOP s, `num_layers` decoder layers, and the single-head pointer projection."""

    def __init__(
        self,
        d_model: int,
        num_layers: int = 2,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        coverage_prior: bool = False,
        prior_stop: PriorStop = "saturation",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.start = nn.Parameter(torch.randn(d_model))  # q_0
        # s, memory slot N. Small at init: u_STOP starts near 0 while the tokens' logits spread on both sides,
        # so an untrained selector keeps choosing tokens (K near T_max) and the length term teaches it to stop.
        # Measured on the world base (8 val images, T_max 64): initial mean K 56.1 for seeds 0/1/2 with this
        # init, 64.0 / 37.2 / 10.9 with a unit-scale s — where training could start from a collapsed K.
        self.stop = nn.Parameter(0.02 * torch.randn(d_model))
        self.layers = nn.ModuleList(DecoderLayer(d_model, num_heads, mlp_ratio) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.pointer_q = nn.Linear(d_model, d_model, bias=False)  # W_p, query side
        self.pointer_k = nn.Linear(d_model, d_model, bias=False)  # W_p, key side
        self.prior = CoveragePrior(stop=prior_stop) if coverage_prior else None
        if coverage_prior:  # the pointer's own logits start flat: untrained, the loop is the prior's policy (MMTok's
            nn.init.zeros_(self.pointer_q.weight)  # greedy, coverage-saturation STOP); training learns the correction

    def memory(self, h: Tensor) -> Tensor:
        """M = [H ; s]: (B, N+1, D)."""
        return torch.cat([h, self.stop.to(h.dtype).expand(h.shape[0], 1, -1)], dim=1)

    def forward(
        self,
        h: Tensor,
        t_max: int,
        tau: float = 1.0,
        continue_after_stop: bool = False,
        min_k: int = 0,
        stop_offset: float = 0.0,
        explore: bool = False,
        generator: torch.Generator | None = None,
        cover: Tensor | None = None,
    ) -> PointerOutput:
        b, n, d = h.shape  # (B, N, D)
        check_loop_args(n, t_max, tau, min_k)
        if (cover is None) != (self.prior is None):
            raise ValueError(
                "a decoder with the coverage prior needs `cover` (MMTok's coverage matrix, B x N x R), and one "
                f"without it takes none (prior: {self.prior is not None}, cover given: {cover is not None})"
            )
        if cover is not None:
            CoveragePrior.check(cover, h)
            cover = cover.to(h.dtype)
            covered, first_max = cover.new_zeros(b, cover.shape[2]), None  # (B, R): coverage of the chosen tokens
        memory = self.memory(h)  # (B, N+1, D)
        memory_kv = [layer.memory_kv(memory) for layer in self.layers]
        pointer_keys = self.pointer_k(memory)  # (B, N+1, D)
        log_mask = h.new_zeros(b, n + 1)  # mask_1 = 0
        e = self.start.to(h.dtype).expand(b, d)  # e_0 = q_0
        caches: list[tuple[Tensor, Tensor] | None] = [None] * len(self.layers)
        done = torch.zeros(b, dtype=torch.bool, device=h.device)
        actions, pis, valids = [], [], []
        for step in range(t_max):
            x = e
            for i, layer in enumerate(self.layers):
                x, caches[i] = layer.step(x, caches[i], memory_kv[i])
            query = self.pointer_q(self.norm(x))  # (B, D)
            u = torch.einsum("bd,bmd->bm", query, pointer_keys) / math.sqrt(d)  # (B, N+1)
            logits = u + log_mask  # (B, N+1)
            if cover is not None:
                prior, first_max = self.prior.logits(cover, covered, first_max)
                logits = logits + prior
            if stop_offset or step < min_k:  # untouched otherwise: the specified loop, bit for bit
                stop = u.new_full((b, 1), float("-inf") if step < min_k else float(stop_offset))
                logits = logits + F.pad(stop, (n, 0))  # before step min_k a running sample has < min_k picks
            pi = torch.softmax(logits / tau, dim=-1)  # (B, N+1)
            if explore:
                best = torch.multinomial(pi.detach(), 1, generator=generator).squeeze(1)  # (B,) sampled
            else:
                best = logits.argmax(dim=-1)
            action = torch.where(done, n, best)  # stopped samples keep choosing STOP
            # what is fed back: the hard action, or with continuation the best visual token (= the action
            # until the sample's first STOP)
            fed = logits[:, :n].argmax(dim=-1) if continue_after_stop else action
            onehot = F.one_hot(fed, n + 1).to(pi.dtype)
            y = onehot + pi - pi.detach()  # straight-through: forward hard, backward through pi
            e = torch.einsum("bm,bmd->bd", y, memory)  # (B, D)
            log_mask = log_mask.masked_fill(onehot.bool() & (fed < n)[:, None], float("-inf"))
            if cover is not None:
                covered = CoveragePrior.update(cover, covered, fed)  # STOP (index N) adds nothing
            actions.append(action)
            pis.append(pi)
            valids.append(~done)
            done = done | (action == n)
            if bool(done.all()) and not continue_after_stop:
                break
        actions_t = torch.stack(actions, dim=1)  # (B, T)
        valid_t = torch.stack(valids, dim=1)  # (B, T)
        picked = valid_t & (actions_t < n)  # (B, T): real visual choices, a prefix of each row
        chosen = F.pad(actions_t.masked_fill(~picked, 0), (0, t_max - actions_t.shape[1]))
        chosen_mask = F.pad(picked, (0, t_max - actions_t.shape[1]))
        horizon = torch.ones_like(valid_t) if continue_after_stop else valid_t
        return PointerOutput(
            actions_t,
            torch.stack(pis, dim=1),
            valid_t,
            chosen,
            chosen_mask,
            picked.sum(dim=1),
            horizon,
        )
