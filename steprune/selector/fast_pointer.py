"""The pointer loop for inference, built for speed: the picks of `PointerDecoder.forward`, bit for bit.

    loop = FastPointerLoop(decoder)                         # reads the decoder's weights; holds none of its own
    chosen, chosen_mask, lengths = loop(h, t_max=64, min_k=1, stop_offset=0.0)    # h: (B, N, D) encoder output
    FastPointerLoop(decoder, compile="inductor")            # each step through torch.compile (opt-in)
    graph = loop.cuda_graph(batch=1, num_tokens=576, t_max=64, dtype=torch.bfloat16)  # the whole loop, one graph
    chosen, chosen_mask, lengths = graph(h)

What the eager loop (`PointerDecoder.forward`, which training runs) does and this one does not, and why the
picks cannot differ:
* a preallocated key/value cache per layer, (B, H, T_max, D/H): step t writes slot t and attends to the slice
  [:t+1] — the shapes and values of the eager `torch.cat`, so the same attention kernel on the same numbers;
* no trajectory of distributions (pi) or actions is kept, no one-hot is built: the straight-through feedback
  y = onehot + pi - pi.detach() is (1 + pi_j) - pi_j at the fed token j and exactly 0 elsewhere, so the eager
  `einsum(y, M)` equals y_j * M_j (a gather) bit for bit; the mask is set by a scatter (no host sync);
* `early_exit=False` runs all T_max steps without a host sync: a stopped sample keeps choosing STOP, which marks
  nothing, so the picks are those of the eager loop that stopped early. That is what a CUDA graph captures.
The memory projections (cross-attention keys/values of M per layer, pointer keys W_k M) are computed once per
image, before the first step, as in the eager loop. Everything else is the same modules and ops in the same
order, so this loop is exact by construction (tested with torch.equal).

`static=True` (implied by `compile=`) runs the step with every shape fixed by T_max: the step index is a tensor,
the cache slot is written by index_copy_ and the query attends to all T_max slots under a mask — one graph for
every step, what torch.compile (`compile="inductor"`, `mode="reduce-overhead"` for CUDA graphs on a GPU) and
`cuda_graph` want. Its attention runs over T_max slots instead of t + 1, so it may round differently from the
eager loop, and inductor generates kernels of its own: the static and compiled picks are tested equal to the
eager picks on random selectors, not guaranteed bit for bit by construction. `cuda_graph` captures the exact
(dynamic-slice) loop instead, one static shape per step, so its replay runs the eager kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from steprune.selector.pointer import DecoderLayer, PointerDecoder, check_loop_args


class Picks(NamedTuple):
    chosen: Tensor  # (B, T_max) long: chosen visual tokens in choice order, padded with 0
    chosen_mask: Tensor  # (B, T_max) bool
    lengths: Tensor  # (B,) long: K per sample


def layer_step(layer: DecoderLayer, x: Tensor, keys: Tensor, values: Tensor, t: int, memory_kv: tuple) -> Tensor:
    """`DecoderLayer.step` for step `t` (0-based) with the cache preallocated: keys/values (B, H, T_max, D/H)."""
    q, k, v = layer.step_qkv(x)  # x: (B, D)
    keys[:, :, t] = k[:, :, 0]
    values[:, :, t] = v[:, :, 0]
    a = F.scaled_dot_product_attention(q, keys[:, :, : t + 1], values[:, :, : t + 1])  # (B, H, 1, D/H)
    return layer.step_rest(x, a, memory_kv)


def static_layer_step(
    layer: DecoderLayer, x: Tensor, keys: Tensor, values: Tensor, t: Tensor, valid: Tensor, memory_kv: tuple
) -> Tensor:
    """`layer_step` with static shapes: slot `t` (a 0-d long tensor) is written by index_copy_ and the query attends
    to the whole cache under the mask `valid` (1, 1, 1, T_max) (slots <= t): one graph for every step."""
    q, k, v = layer.step_qkv(x)
    keys.index_copy_(2, t.view(1), k)
    values.index_copy_(2, t.view(1), v)
    a = F.scaled_dot_product_attention(q, keys, values, attn_mask=valid)  # (B, H, 1, D/H)
    return layer.step_rest(x, a, memory_kv)


class FastPointerLoop:
    """The inference pointer loop of `decoder` (see the module docstring). No state between calls."""

    def __init__(
        self, decoder: PointerDecoder, static: bool = False, compile: str | None = None, mode: str | None = None
    ) -> None:
        self.decoder = decoder
        self.static = static or compile is not None
        self.compile = compile
        # per instance, never global: torch.compile of this loop's static step (one graph for every step)
        self._step: Callable = self.step if compile is None else torch.compile(self.step, backend=compile, mode=mode)

    @staticmethod
    def _feedback(
        logits: Tensor, memory: Tensor, log_mask: Tensor, done: Tensor, tau: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The action and what it feeds back: (next e, action, mask after it, done after it)."""
        b, n1, d = memory.shape
        n = n1 - 1
        pi = torch.softmax(logits / tau, dim=-1)  # (B, N+1): only its value at the fed token is read
        action = torch.where(done, n, logits.argmax(dim=-1))  # (B,)
        fed = action.unsqueeze(1)  # (B, 1)
        p = pi.gather(1, fed)
        y = (1 + p) - p  # the straight-through weight's value at the fed token (exactly 0 elsewhere)
        e = y * memory.gather(1, fed.unsqueeze(-1).expand(b, 1, d)).squeeze(1)  # (B, D) = einsum(y, M)
        masked = torch.where(fed < n, float("-inf"), log_mask.gather(1, fed))
        return e, action, log_mask.scatter(1, fed, masked), done | (action == n)

    def step(
        self,
        e: Tensor,
        t: int | Tensor,
        caches: list[tuple[Tensor, Tensor]],
        memory_kvs: list[tuple[Tensor, Tensor]],
        memory: Tensor,
        pointer_keys: Tensor,
        log_mask: Tensor,
        done: Tensor,
        tau: float,
        min_k: int,
        stop_offset: float,
        static: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One pointer step: (next fed embedding e, the action, the mask after it, done after it).

        `static`: `t` is a 0-d tensor and every shape is fixed by T_max (what torch.compile and CUDA graphs want);
        the STOP offset / floor is then always added (+0 where the eager loop adds nothing: the same logits)."""
        dec = self.decoder
        b, n1, d = memory.shape
        n = n1 - 1
        x = e
        if static:
            slots = caches[0][0].shape[2] if caches else 1
            valid = (torch.arange(slots, device=memory.device) <= t).view(1, 1, 1, slots)  # written slots, t included
        for layer, (keys, values), memory_kv in zip(dec.layers, caches, memory_kvs, strict=True):
            if static:
                x = static_layer_step(layer, x, keys, values, t, valid, memory_kv)
            else:
                x = layer_step(layer, x, keys, values, t, memory_kv)
        query = dec.pointer_q(dec.norm(x))  # (B, D)
        u = torch.einsum("bd,bmd->bm", query, pointer_keys) / math.sqrt(d)  # (B, N+1)
        logits = u + log_mask
        if static:
            stop = torch.where(t < min_k, float("-inf"), float(stop_offset)).to(u.dtype)
            logits = logits + F.pad(stop.expand(b, 1), (n, 0))
        elif stop_offset or t < min_k:  # as the eager loop: untouched otherwise
            stop = u.new_full((b, 1), float("-inf") if t < min_k else float(stop_offset))
            logits = logits + F.pad(stop, (n, 0))
        return self._feedback(logits, memory, log_mask, done, tau)

    def __call__(
        self,
        h: Tensor,
        t_max: int,
        tau: float = 1.0,
        min_k: int = 0,
        stop_offset: float = 0.0,
        early_exit: bool = True,
    ) -> Picks:
        """The hard picks of `PointerDecoder.forward(h, t_max, tau, min_k=min_k, stop_offset=stop_offset)`."""
        with torch.no_grad():
            return self._run(h, t_max, tau, min_k, stop_offset, early_exit)

    def _run(self, h: Tensor, t_max: int, tau: float, min_k: int, stop_offset: float, early_exit: bool) -> Picks:
        dec = self.decoder
        b, n, d = h.shape  # (B, N, D)
        check_loop_args(n, t_max, tau, min_k)
        memory = dec.memory(h)  # (B, N+1, D)
        memory_kvs = [layer.memory_kv(memory) for layer in dec.layers]  # once per image
        pointer_keys = dec.pointer_k(memory)  # (B, N+1, D), once per image
        shape = [(b, layer.num_heads, t_max, d // layer.num_heads) for layer in dec.layers]
        caches = [(h.new_zeros(s), h.new_zeros(s)) for s in shape]  # (B, H, T_max, D/H) keys, values per layer
        log_mask = h.new_zeros(b, n + 1)
        e = dec.start.to(h.dtype).expand(b, d)
        done = torch.zeros(b, dtype=torch.bool, device=h.device)
        chosen = torch.zeros(b, t_max, dtype=torch.long, device=h.device)
        chosen_mask = torch.zeros(b, t_max, dtype=torch.bool, device=h.device)
        steps = torch.arange(t_max, device=h.device)  # the static step's index tensors
        for t in range(t_max):
            picked = ~done
            e, action, log_mask, done = self._step(
                e,
                steps[t] if self.static else t,
                caches,
                memory_kvs,
                memory,
                pointer_keys,
                log_mask,
                done,
                tau,
                min_k,
                stop_offset,
                static=self.static,
            )
            picked = picked & (action < n)
            chosen[:, t] = action.masked_fill(~picked, 0)
            chosen_mask[:, t] = picked
            if early_exit and bool(done.all()):
                break
        return Picks(chosen, chosen_mask, chosen_mask.sum(dim=1))

    def cuda_graph(
        self,
        batch: int,
        num_tokens: int,
        t_max: int,
        dtype: torch.dtype = torch.float32,
        tau: float = 1.0,
        min_k: int = 0,
        stop_offset: float = 0.0,
        warmup: int = 2,
    ) -> Callable[[Tensor], Picks]:
        """The whole loop (all T_max steps, no host sync) captured as one CUDA graph for h of shape
        (batch, num_tokens, D): the returned call copies h in, replays, and returns copies of the picks."""
        exact = FastPointerLoop(self.decoder)  # the dynamic-slice loop: each step's shapes are fixed at capture
        device = next(self.decoder.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"a CUDA graph needs the decoder on a CUDA device, it is on {device}")
        static_h = torch.zeros(batch, num_tokens, self.decoder.d_model, device=device, dtype=dtype)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                exact(static_h, t_max, tau, min_k, stop_offset, early_exit=False)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = exact(static_h, t_max, tau, min_k, stop_offset, early_exit=False)

        def call(h: Tensor) -> Picks:
            static_h.copy_(h)
            graph.replay()
            return Picks(*(t.clone() for t in static_out))

        return call
