"""In-LLM token dropping (FastV, SparseVLM, PyramidDrop, DART) through instance hooks, no patching.

`InLLMPruning` is a context manager that installs forward pre-hooks on the decoder-layer *instances* of
one model and removes them on exit. Before each drop layer it asks the method which visual tokens to
keep (given a `LayerView` that computes the attention rows it needs explicitly from that layer's q/k),
shortens the hidden states, and from then on hands every later layer the matching slice of the causal
mask and rotary embeddings — in the prefill and in every cached decoding step. The LLM keeps SDPA.

    with InLLMPruning(adapter.decoder, drops, image_slots, attention_mask) as session:
        logits = model(**spliced.model_kwargs()).logits
    session.kept_tokens  # visual tokens alive after each drop

HF's batch expansion (`num_beams`, `num_return_sequences`) repeats every prompt r times
(`repeat_interleave`, so rows b*r .. b*r+r-1 are prompt b) before the prefill. The session sees r*B rows
where it was given B prompts: it checks the copies are identical, lets the method choose once per prompt (on
the first copy, so its `PruneContext` of B rows still lines up) and gives every copy that choice. Beam
reordering only permutes rows within a prompt's group, which all hold the same kept columns.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from steprune.backbones.layer_view import LayerView
from steprune.pruners.contract import LayerDrop

# The keyword under which a decoder layer receives the KV cache: transformers >= 5.24 passes `cache`
# (`past_key_values` is deprecated there); 5.0-5.23 pass `past_key_values`; older code `past_key_value`.
CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")


def layer_cache(kwargs: dict) -> Any:
    """The KV cache a decoder layer was handed, under whichever keyword this transformers release uses."""
    for name in CACHE_KWARGS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def _gather_seq(x: Tensor, cols: Tensor, dim: int) -> Tensor:
    """Gather positions `cols` (B, S') along `dim` of x whose dim 0 is the batch."""
    shape = [1] * x.dim()
    shape[0], shape[dim] = cols.shape
    index = cols.view(shape).expand(*[x.shape[i] if i != dim else cols.shape[1] for i in range(x.dim())])
    return x.gather(dim, index)


class InLLMPruning:
    """Context manager: drop visual tokens inside the LLM at the layers the method names."""

    def __init__(self, decoder: nn.Module, drops: list[LayerDrop], image_slots: Tensor, attention_mask: Tensor) -> None:
        num_layers = len(decoder.layers)
        for drop in drops:
            if not 0 < drop.layer < num_layers:
                raise ValueError(f"in-LLM drop layer {drop.layer} outside 1..{num_layers - 1}")
        if len({int(n) for n in image_slots.sum(dim=1)}) > 1:
            raise ValueError("in-LLM pruning needs the same number of visual tokens in every sample")
        self.decoder = decoder
        self.drops = {d.layer: d for d in sorted(drops, key=lambda d: d.layer)}
        self.image_slots = image_slots  # (B, S) bool
        self.valid = attention_mask.bool()  # (B, S)
        self.expand = 1  # r: HF's copies of each prompt in the running batch (beams / return sequences)
        self.first_drop = min(self.drops) if self.drops else num_layers
        capture = {layer - 1 for layer in self.drops} | set(self.drops)
        self.capture_layers = capture
        self._handles: list[Any] = []
        self.kept_tokens: list[tuple[int, int]] = []  # (layer, visual tokens alive from it on)
        self.flops = [0.0]
        self._prefill = True
        self._reset()

    def _reset(self) -> None:
        self.full_len: int | None = None
        self.cols: Tensor | None = None  # (B, S_j) columns of the full prefill kept so far
        self.layer_cols: dict[int, Tensor] = {}  # layer -> the prefill columns its KV cache holds
        self.image_positions: Tensor | None = None  # (B, n) positions within the current sequence
        self.layer_inputs: dict[int, Tensor] = {}
        self.kept_tokens = []
        self.shift: Tensor | None = None  # (B, S_j) renumbering: dropped visual tokens before each kept column
        self.dropped: Tensor | None = None  # (B,) renumbering: visual tokens dropped so far
        self.layer_dropped: dict[int, Tensor] = {}  # layer -> `dropped` as it ran the prefill (decode shift)

    def __enter__(self) -> InLLMPruning:
        first = self.decoder.layers[0]
        self._handles.append(first.register_forward_pre_hook(self._step_start, with_kwargs=True))  # runs first
        for index, layer in enumerate(self.decoder.layers):
            if index in self.capture_layers or index >= self.first_drop:
                hook = self._make_hook(index)
                self._handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ------------------------------------------------------------------------------------------------
    def _step_start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        cache = layer_cache(kwargs)
        is_prefill = self.full_len is None or cache is None or cache.get_seq_length() == 0
        if is_prefill:
            self._reset()
            self.full_len = hidden.shape[1]
            rows = hidden.shape[0]
            self.expand = self._expansion(hidden)
            slots = self.image_slots.repeat_interleave(self.expand, dim=0)  # (r*B, S)
            self.cols = torch.arange(self.full_len, device=hidden.device).expand(rows, -1)
            self.image_positions = slots.nonzero()[:, 1].view(rows, -1)
            self.kept_tokens = [(0, self.image_positions.shape[1])]
            self.shift = torch.zeros_like(self.cols)
            self.dropped = torch.zeros(rows, dtype=torch.long, device=hidden.device)
        self._prefill = is_prefill

    def _expansion(self, hidden: Tensor) -> int:
        """r such that the prefill's rows (r*B, S, D) are HF's r identical copies of each of the B prompts."""
        b, s = self.image_slots.shape
        rows = hidden.shape[0]
        if hidden.shape[1] != s:
            raise ValueError(
                f"the LLM prefill has {hidden.shape[1]} positions but in-LLM pruning was set up for {s}: "
                "pass the spliced inputs of `PrunedVLM.prepare` unchanged to the model"
            )
        if rows % b != 0:
            raise ValueError(
                f"the LLM prefill has {rows} rows for {b} prompts: in-LLM pruning supports HF's batch expansion "
                "(num_beams / num_return_sequences: a whole number of copies per prompt) and nothing else"
            )
        expand = rows // b
        if expand > 1:
            grouped = hidden.view(b, expand, *hidden.shape[1:])  # (B, r, S, D)
            if not torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
                raise ValueError(
                    f"the LLM prefill has {expand} rows per prompt that are not copies of one another: in-LLM "
                    "pruning expects HF's repeat_interleave expansion (num_beams / num_return_sequences)"
                )
        return expand

    def _make_hook(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            hidden = args[0] if args else kwargs.pop("hidden_states")
            args = args[1:] if args else ()
            if self._prefill:
                if index in self.capture_layers:
                    self.layer_inputs[index] = hidden  # what a drop at this very layer reads
                if index in self.drops:
                    hidden = self._drop(index, hidden, kwargs)
                    self.layer_inputs[index] = hidden  # what later drops read: the same length as their view
            if index >= self.first_drop:
                if self._prefill:
                    self.layer_cols[index] = self.cols
                    self.layer_dropped[index] = self.dropped
                kwargs = self._slice_kwargs(kwargs, hidden.shape[1], self.layer_cols[index])
                if not self._prefill and bool(self.layer_dropped[index].any()):  # renumbered: decode follows
                    cos, sin = kwargs["position_embeddings"]  # (B, T, dh) of the new tokens
                    shift = self.layer_dropped[index].unsqueeze(1).expand(-1, cos.shape[1])
                    kwargs["position_embeddings"] = self._shifted(cos, sin, shift)
            return (hidden, *args), kwargs

        return hook

    def _current_posemb(self, kwargs: dict) -> tuple[Tensor, Tensor]:
        cos, sin = kwargs["position_embeddings"]  # (B, S_full, dh) from the decoder, or already sliced
        if cos.shape[1] != self.cols.shape[1]:
            cos, sin = _gather_seq(cos, self.cols, 1), _gather_seq(sin, self.cols, 1)
        if bool(self.shift.any()):  # renumbered columns: their positions minus the drops before them
            cos, sin = self._shifted(cos, sin, self.shift)
        return cos, sin

    def _shifted(self, cos: Tensor, sin: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
        """Rotary cos/sin (B, S, dh) of positions p moved to p - shift (B, S): angle subtraction, so it holds for
        1-D RoPE and M-RoPE alike (every component moves by the same shift)."""
        rotary = self.decoder.rotary_emb
        if getattr(rotary, "attention_scaling", 1.0) != 1.0:
            raise ValueError("renumbered positions need a rotary embedding without attention scaling")
        cos_s, sin_s = rotary(cos, shift)  # (B, S, dh) at the shift itself
        c, s, cs, ss = cos.float(), sin.float(), cos_s.float(), sin_s.float()
        return (c * cs + s * ss).to(cos.dtype), (s * cs - c * ss).to(sin.dtype)

    def _drop(self, index: int, hidden: Tensor, kwargs: dict) -> Tensor:
        r = self.expand
        valid = _gather_seq(self.valid.repeat_interleave(r, dim=0), self.cols, 1)  # (r*B, S_j)
        cos, sin = self._current_posemb(kwargs)
        view = LayerView(  # the first copy of each prompt: what the method sees is its B prompts
            layer=index,
            hidden_states=hidden[::r],
            image_positions=self.image_positions[::r],
            valid=valid[::r],
            layer_inputs={layer: x[::r] for layer, x in self.layer_inputs.items()},
            position_embeddings=(cos[::r], sin[::r]),
            decoder=self.decoder,
            flops=self.flops,
        )
        with torch.no_grad():
            chosen = self.drops[index].choose(view)  # (B, k) indices into image_positions
        if chosen.dim() != 2 or chosen.shape[0] != view.image_positions.shape[0]:
            raise ValueError(
                f"the drop before layer {index} chose {tuple(chosen.shape)} indices for "
                f"{view.image_positions.shape[0]} samples: LayerDrop.choose must return (B, k)"
            )
        chosen = chosen.repeat_interleave(r, dim=0)  # (r*B, k): every copy keeps its prompt's choice
        b, s = valid.shape
        chosen_pos = self.image_positions.gather(1, chosen)
        keep = torch.ones(b, s, dtype=torch.bool, device=hidden.device)
        keep.scatter_(1, self.image_positions, False)
        keep.scatter_(1, chosen_pos, True)
        relative = keep.nonzero()[:, 1].view(b, -1)  # (B, S') sorted
        is_image = torch.zeros_like(keep)
        is_image.scatter_(1, chosen_pos, True)
        self.image_positions = is_image.gather(1, relative).nonzero()[:, 1].view(b, -1)
        shift = self.shift
        if self.drops[index].renumber:
            removed = (~keep).long()  # (B, S_j) only visual tokens are ever removed
            shift = shift + removed.cumsum(dim=1) - removed
            self.dropped = self.dropped + removed.sum(dim=1)
        self.shift = shift.gather(1, relative)
        self.cols = self.cols.gather(1, relative)
        self.kept_tokens.append((index, self.image_positions.shape[1]))
        return _gather_seq(hidden, relative, 1)

    def _slice_kwargs(self, kwargs: dict, seq_len: int, cols: Tensor) -> dict:
        """Slice the layer's rotary embeddings / mask to the prefill columns `cols` (B, S_j) it keeps."""
        kwargs = dict(kwargs)
        if self._prefill:
            kwargs["position_embeddings"] = self._current_posemb(kwargs)
            if isinstance(kwargs.get("position_ids"), Tensor) and kwargs["position_ids"].shape[-1] != seq_len:
                kwargs["position_ids"] = _gather_seq(kwargs["position_ids"].expand(cols.shape[0], -1), cols, 1)
            key_cols = query_cols = cols
        else:
            query_cols = None
            mask = kwargs.get("attention_mask")
            total = mask.shape[-1] if isinstance(mask, Tensor) else 0
            new = torch.arange(self.full_len, max(total, self.full_len), device=cols.device)
            new = new.expand(cols.shape[0], -1)
            key_cols = torch.cat([cols, new], dim=1)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, Tensor):
            if query_cols is not None and mask.shape[-2] != seq_len:
                mask = _gather_seq(mask.expand(cols.shape[0], *mask.shape[1:]), query_cols, 2)
            if mask.shape[-1] != key_cols.shape[1]:
                mask = _gather_seq(mask.expand(cols.shape[0], *mask.shape[1:]), key_cols, 3)
            kwargs["attention_mask"] = mask
        return kwargs
