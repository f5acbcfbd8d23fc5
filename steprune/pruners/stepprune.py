"""StepPrune at inference: the trained pointer selector picks an adaptive number of visual tokens.

    PrunedVLM(model, processor, method="steprune", weights="runs/selector.safetensors")
    PrunedVLM.from_pretrained("llava-hf/llava-1.5-7b-hf", method="steprune", selector="org/name")  # or a directory
    PRUNERS.create("steprune", weights="selector.safetensors", t_max=64).select(ctx)

The selector (`steprune.selector.StepPruneSelector`) reads the vision-space features and the prompt's word
embeddings, runs its pointer loop until STOP (or T_max), and the chosen tokens go to the LLM in spatial
order: K differs per sample (ragged result). `ctx.budget` is not used: the policy decides K; compare it
with fixed-budget methods at the same *mean* K.

Choices where the specification is open:
* The text gate alpha is 1 at inference (the end of its annealing).
* `min_k` (default: the selector's own, 1 unless it was trained otherwise) is a floor on K: STOP is masked
  until that many tokens are chosen, so no image question is answered from no image. The selector's
  calibrated STOP offset (`steprune.training.calibration`, saved in its file) is applied.
* `ctx.text_free` passes an empty prompt (L = 0), so the encoder sees the image alone.
* A selector trained with the coverage prior (`prior="coverage"`) gets MMTok's coverage matrix of the context
  (`steprune.pruners.mmtok.default_coverage_t`; vision-vision only when text-free).
* `selection_flops` is analytic and per sample: each sample's real prompt length and its own number of
  pointer steps (K + 1 with the STOP step, or T_max), summed over the batch; the batched loop's
  padded steps are not counted.
* `allow_random=True` (tests only) builds an untrained selector on the first batch, sized from the
  context's widths (d_model = D_v), seeded by `seed` without touching the global RNG.
* `selector` is what `StepPruneSelector.from_pretrained` reads: a `save_pretrained` directory, a Hub repo id
  (`selector_revision` pins its revision; `HF_HUB_OFFLINE=1` uses the local cache only) or a `.safetensors`
  file; `weights` is the single file `make train` exports. A local path that does not exist is never looked up
  on the Hub.
* A weights file records the base it was trained on (its backbone fingerprint); `check_backbone`, which
  `PrunedVLM` calls, refuses another base with `BackboneMismatchError` (e.g. a stale selector after
  `make base ARGS=--force`) unless `allow_backbone_mismatch=True` (a deliberate transfer, with a warning). A
  file exported before fingerprints were recorded, or a model built in memory, is used with a warning.
* The selector runs in its own dtype (the features are cast to it, e.g. bf16 -> fp32): the module is never
  cast in place. A selector the pruner loaded or built follows the context's device; one handed in from
  outside (a live, training selector) is never moved, cast or switched to eval mode: the inputs go to it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from steprune.backbones.fingerprint import BackboneMismatchError, model_fingerprint
from steprune.pruners.contract import PrePrunerBase, PruneContext, PruneResult
from steprune.pruners.mmtok import default_coverage_t
from steprune.pruners.registry import PRUNERS
from steprune.selector.selector import StepPruneSelector

HOW_TO_TRAIN = (
    "train one with `make train` (which saves the selector as a .safetensors file) and pass "
    "weights='path/to/selector.safetensors', or selector= a save_pretrained directory or a Hub id"
)


def untrained_selector(d_vision: int, d_text: int, seed: int = 0) -> StepPruneSelector:
    """A randomly initialised selector of the default size for these widths (d_model = D_v; the most heads of
    8, 4, 2, 1 that divide D_v), seeded by `seed` without touching the global RNG; in eval mode."""
    heads = next(h for h in (8, 4, 2, 1) if d_vision % h == 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StepPruneSelector(
            d_vision, d_text, encoder_heads=heads, decoder_heads=heads, denoiser_heads=heads
        ).eval()


@PRUNERS.register("steprune")
class StepPrunePruner(PrePrunerBase):
    """Adaptive-K pointer selection with a trained StepPrune selector (safetensors weights)."""

    reads_text = True
    adaptive = True

    def __init__(
        self,
        weights: str | None = None,
        tau: float = 1.0,
        t_max: int | None = None,
        allow_random: bool = False,
        seed: int = 0,
        min_k: int | None = None,
        allow_backbone_mismatch: bool = False,
        selector: str | None = None,
        selector_revision: str | None = None,
    ) -> None:
        if weights is not None and selector is not None:
            raise ValueError(
                "give the 'steprune' method one selector: weights= (a .safetensors file) or selector= (a directory, "
                f"a Hub id or a file), not both (got weights={weights!r}, selector={selector!r})"
            )
        if selector_revision is not None and selector is None:
            raise ValueError("selector_revision pins a Hub selector's revision: pass selector='org/name' with it")
        weights = weights if weights is not None else selector
        if weights is None and not allow_random:
            raise ValueError(
                f"the 'steprune' method needs trained selector weights: {HOW_TO_TRAIN}. "
                "(allow_random=True builds an untrained selector, for tests only.)"
            )
        if t_max is not None and (isinstance(t_max, bool) or not isinstance(t_max, int) or t_max < 1):
            raise ValueError(f"t_max must be a positive int or None (the selector's own), got {t_max!r}")
        if min_k is not None and (isinstance(min_k, bool) or not isinstance(min_k, int) or min_k < 0):
            raise ValueError(f"min_k must be an int >= 0 or None (the selector's own), got {min_k!r}")
        if not isinstance(allow_backbone_mismatch, bool):
            raise TypeError(f"allow_backbone_mismatch must be True or False, got {allow_backbone_mismatch!r}")
        self.min_k = min_k
        self.weights = weights
        self.allow_backbone_mismatch = allow_backbone_mismatch
        self.tau = tau
        self.t_max = t_max
        self.allow_random = allow_random
        self.seed = seed
        self._selector: StepPruneSelector | None = None
        self._own: StepPruneSelector | None = None  # the selector this pruner loaded or built (it may move it)
        if weights is not None:
            try:
                if selector is None:
                    loaded = StepPruneSelector.load(weights)
                else:
                    loaded = StepPruneSelector.from_pretrained(selector, revision=selector_revision)
            except FileNotFoundError as error:
                raise FileNotFoundError(f"{error}: {HOW_TO_TRAIN}") from error
            self._selector = self._own = loaded.eval()

    @classmethod
    def from_selector(
        cls, selector: StepPruneSelector, tau: float = 1.0, t_max: int | None = None, min_k: int | None = None
    ) -> StepPrunePruner:
        """Wrap a live selector (e.g. the one being trained) without going through a file."""
        pruner = cls(tau=tau, t_max=t_max, allow_random=True, min_k=min_k)
        pruner._selector = selector
        return pruner

    def check_backbone(self, model: Any) -> None:
        """Refuse a selector file trained on another base than `model` (see the module docstring)."""
        if self.weights is None or self._own is None:
            return  # a live selector (the one being trained) or a random one: nothing recorded to check
        trained = self._own.trained_on
        if trained is None:
            warnings.warn(
                f"{self.weights} records no backbone fingerprint (exported before they were recorded): it is applied "
                "without checking that it was trained on this base; re-export it with `make train` to record it",
                stacklevel=3,
            )
            return
        current = model_fingerprint(model)
        if current is None:
            warnings.warn(
                f"{self.weights} was trained on {trained['backbone']!r}; this model was built in memory (no "
                "directory or hub id), so that cannot be checked: load it with from_pretrained to have it checked",
                stacklevel=3,
            )
            return
        if current == trained["fingerprint"]:
            return
        name = getattr(model.config, "_name_or_path", "?")
        what = (
            f"{self.weights} was trained on another base than this one: trained on {trained['backbone']!r} "
            f"({trained['fingerprint'][:19]}), applied to {name!r} ({current[:19]})"
        )
        if self.allow_backbone_mismatch:
            warnings.warn(f"{what}; used anyway (allow_backbone_mismatch=True, a deliberate transfer)", stacklevel=3)
            return
        raise BackboneMismatchError(
            f"{what}, e.g. the base was rebuilt (`make base ARGS=--force`) after the selector was exported. "
            "Retrain the selector on this base with `make train` (it writes artifacts/selector.safetensors), "
            "or pass allow_backbone_mismatch=True to apply it to this base on purpose (a transfer)."
        )

    def selector(self, ctx: PruneContext) -> StepPruneSelector:
        """The selector, checked against the context's widths; one this pruner owns moves to ctx's device."""
        d_vision, d_text = ctx.vision_features.shape[-1], ctx.text_embeds.shape[-1]
        if self._selector is None:
            self._selector = self._own = untrained_selector(d_vision, d_text, self.seed)
        config = self._selector.config
        if (config["d_vision"], config["d_text"]) != (d_vision, d_text):
            source = self.weights or "the random selector"
            raise ValueError(
                f"{source} was built for vision width {config['d_vision']} and text width {config['d_text']}, "
                f"but this backbone gives {d_vision} and {d_text}"
            )
        if self._selector is self._own:
            self._selector.to(device=ctx.device)
        return self._selector

    def select(self, ctx: PruneContext) -> PruneResult:
        selector = self.selector(ctx)
        text, text_mask = ctx.text_embeds, ctx.text_mask
        if ctx.text_free:
            text, text_mask = text[:, :0], text_mask[:, :0]
        b, n = ctx.batch_size, ctx.num_tokens
        t_max = self.t_max if self.t_max is not None else (selector.t_max or n)
        if t_max > n:
            raise ValueError(f"t_max={t_max} exceeds the {n} visual tokens of this backbone (a token is chosen once)")
        param = next(selector.parameters())  # the selector keeps its own dtype; inputs follow it
        vision = ctx.vision_features.to(param.device, param.dtype)
        text, text_mask = text.to(param.device, param.dtype), text_mask.to(param.device)
        cover = None
        if selector.prior == "coverage":  # MMTok's coverage matrix, the prior's input (B, N, R)
            prompt = (None, None) if ctx.text_free else (ctx.text_embeds, ctx.text_mask)
            cover = default_coverage_t(ctx.image_tokens, ctx.vision_features, *prompt).to(param.device, param.dtype)
        selection = selector.select(vision, text, text_mask, tau=self.tau, t_max=t_max, min_k=self.min_k, cover=cover)
        counts = torch.zeros(b, n, dtype=torch.long, device=param.device)
        chosen = counts.scatter_add_(1, selection.keep, selection.keep_mask.long()) > 0  # (B, N)
        lengths = selection.lengths.tolist()
        text_lengths = text_mask.sum(dim=1).tolist()
        flops = sum(selector.flops(n, int(tl), min(k + 1, t_max)) for k, tl in zip(lengths, text_lengths, strict=True))
        return PruneResult.from_mask(chosen.to(ctx.device), selection_flops=flops, k=selection.lengths.to(ctx.device))
