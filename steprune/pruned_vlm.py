"""`PrunedVLM`: a Hugging Face MLLM whose visual tokens are pruned before (or inside) the LLM prefill.

    vlm = PrunedVLM.from_pretrained("llava-hf/llava-1.5-7b-hf", method="mmtok", budget=64)
    inputs = vlm.processor(images=images, text=prompts, return_tensors="pt", padding=True)
    new_tokens = vlm.generate(**inputs, max_new_tokens=16)      # KV cache, batched, ragged K allowed
    out = vlm(**inputs)                                          # logits over the shortened sequence
    report = vlm.selection_report(**inputs)                      # stages + selection FLOPs, LLM run only if needed

The model is frozen. Nothing is patched: pruning happens on the model's public seams (vision tower,
projector, input embeddings, `inputs_embeds`/`attention_mask`/`position_ids`) plus, for in-LLM methods,
instance hooks that are removed when the call returns.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from steprune.backbones import BackboneAdapter, VisionOutput, adapter_for
from steprune.backbones.in_llm import InLLMPruning
from steprune.backbones.splice import POSITION_POLICIES, PositionPolicy, SplicedInputs
from steprune.pruners import PRUNERS, PruneContext, Pruner, PruneResult
from steprune.pruners.stepprune import StepPrunePruner


@dataclass(frozen=True)
class Prepared:
    """Everything one batch went through before the LLM."""

    spliced: SplicedInputs
    result: PruneResult
    context: PruneContext
    vision: VisionOutput


@dataclass(frozen=True)
class PrunedOutput:
    logits: Tensor  # (B, L_out, V) over the sequence the last layer saw
    result: PruneResult  # the pre-LLM selection (keep-all for pure in-LLM methods)
    visual_tokens_per_stage: list[tuple[int, int]]  # (first layer, visual tokens alive) through the LLM
    selection_flops: float


@dataclass(frozen=True)
class SelectionReport:
    """What a pruned forward reports about its selection, without logits (see `PrunedVLM.selection_report`)."""

    result: PruneResult  # the pre-LLM selection (keep-all for pure in-LLM methods)
    visual_tokens_per_stage: list[tuple[int, int]]  # (first layer, visual tokens alive) through the LLM
    selection_flops: float


def check_budget_argument(budget: object) -> None:
    """A budget is a positive int or None (every visual token); raised before any model is loaded."""
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)):
        raise TypeError(f"budget must be an int or None, got {type(budget).__name__}")
    if budget is not None and budget <= 0:
        raise ValueError(f"budget must be positive (visual tokens to keep) or None for all of them, got {budget}")


def check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")


def create_pruner(method: str | Pruner, method_kwargs: dict[str, Any]) -> Pruner:
    """The pruner `method` names, its keyword arguments checked against its constructor (valid ones listed)."""
    if not isinstance(method, str):
        if not isinstance(method, Pruner):
            raise TypeError(f"method must be a registered name or a Pruner, got {type(method).__name__}")
        if method_kwargs:
            raise TypeError(
                f"method kwargs {sorted(method_kwargs)} are only accepted with a method name: "
                "configure a Pruner instance through its own constructor"
            )
        return method
    cls = PRUNERS.get(method)
    if method_kwargs.get("trust_remote_code"):
        raise ValueError(
            "trust_remote_code=True is not supported: steprune loads models with trust_remote_code=False and never "
            "runs code from the Hub; use a checkpoint of a supported family (LLaVA-1.5, Qwen2.5-VL) in transformers"
        )
    method_kwargs = {k: v for k, v in method_kwargs.items() if k != "trust_remote_code"}
    parameters = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    valid = [name for name, p in parameters.items() if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(method_kwargs) - set(valid))
    if unknown and not accepts_any:
        hints = [
            f"{name!r} -> {close[0]!r}" for name in unknown if (close := difflib.get_close_matches(name, valid, 1))
        ]
        hint = f" Did you mean {', '.join(hints)}?" if hints else ""
        raise TypeError(
            f"method {cls.name!r} takes no argument(s) {', '.join(map(repr, unknown))}.{hint} "
            f"Its arguments: {', '.join(valid) or '(none)'}. Not the method's: budget, position_policy, text_free "
            "(PrunedVLM also seed; from_pretrained also dtype, device_map)"
        )
    return cls(**method_kwargs)


def check_batch(input_ids: Tensor, attention_mask: Tensor, image_token_id: int, inputs: dict[str, Any]) -> None:
    """Refuse, at the boundary, a batch that would otherwise fail deep inside the model or give garbage."""
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be a (B, L) tensor from the processor, got {getattr(input_ids, 'shape', input_ids)}"
        )
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(
            f"empty batch: input_ids has shape {tuple(input_ids.shape)}; pass at least one prompt with its image"
        )
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}: "
            "pass the processor's attention_mask with its input_ids"
        )
    present = attention_mask.bool()  # (B, L)
    empty = (~present.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"attention_mask is all zeros for sample(s) {empty}: nothing of those prompts would be read; pass the "
            "processor's attention_mask (1 on real tokens, 0 on padding only)"
        )
    hidden = ((input_ids == image_token_id) & ~present).any(dim=1).nonzero().flatten().tolist()
    if hidden:
        raise ValueError(
            f"attention_mask is 0 on image placeholder tokens of sample(s) {hidden}: the image would be masked out; "
            "pass the processor's attention_mask (1 on real tokens, 0 on padding only)"
        )
    pixels = inputs.get("pixel_values")
    if isinstance(pixels, Tensor) and pixels.is_floating_point() and not bool(torch.isfinite(pixels).all()):
        nan, inf = int(pixels.isnan().sum()), int(pixels.isinf().sum())
        raise ValueError(
            f"pixel_values hold {nan} NaN and {inf} infinite values: the model would answer garbage; check how the "
            "images were loaded and normalised (use the model's processor on real RGB images)"
        )


class PrunedVLM:
    """One frozen MLLM + one pruning method + one budget."""

    def __init__(
        self,
        model: PreTrainedModel,
        processor: Any | None = None,
        method: str | Pruner = "identity",
        budget: int | None = None,
        position_policy: PositionPolicy = "keep_original",
        text_free: bool = False,
        seed: int = 0,
        **method_kwargs: Any,
    ) -> None:
        check_budget_argument(budget)
        check_seed(seed)
        if position_policy not in POSITION_POLICIES:
            raise ValueError(f"position_policy must be one of {POSITION_POLICIES}, got {position_policy!r}")
        self.adapter: BackboneAdapter = adapter_for(model)
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.pruner: Pruner = create_pruner(method, method_kwargs)
        if isinstance(self.pruner, StepPrunePruner):
            self.pruner.check_backbone(model)  # a selector file trained on another base is refused
        self.budget = budget
        self.position_policy = position_policy
        self.text_free = text_free
        self.seed = seed

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        method: str | Pruner = "mmtok",
        budget: int | None = 64,
        dtype: str | torch.dtype = "auto",
        device_map: str | dict | None = None,
        position_policy: PositionPolicy = "keep_original",
        text_free: bool = False,
        **method_kwargs: Any,
    ) -> PrunedVLM:
        """Load processor + model from a local directory or a hub id (`trust_remote_code` stays off).

        Everything that can be checked without the weights is checked first: the path (a local path that does
        not exist is never looked up on the Hub), the budget, the method and its keyword arguments.
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from steprune.base_location import resolve_pretrained

        source = resolve_pretrained(name_or_path)
        check_budget_argument(budget)
        if position_policy not in POSITION_POLICIES:
            raise ValueError(f"position_policy must be one of {POSITION_POLICIES}, got {position_policy!r}")
        pruner = create_pruner(method, method_kwargs)  # before loading gigabytes: typos, kwargs, weights files
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=dtype, device_map=device_map, trust_remote_code=False
        )
        return cls(model, processor, pruner, budget, position_policy, text_free)

    # ------------------------------------------------------------------------------------------------
    def context(self, input_ids: Tensor, attention_mask: Tensor, vision: VisionOutput) -> PruneContext:
        text_embeds, text_mask = self.adapter.prompt_embeddings(input_ids, attention_mask)
        n = vision.image_tokens.shape[1]
        budget = n if self.budget is None else self.budget
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        pieces = self.prompt_pieces(input_ids, attention_mask) if getattr(self.pruner, "reads_words", False) else None
        return PruneContext(
            text_pieces=pieces,
            image_tokens=vision.image_tokens,
            vision_features=vision.vision_features,
            text_embeds=text_embeds,
            text_mask=text_mask,
            budget=budget,
            grid=vision.grid,
            vision=vision.access,
            text_free=self.text_free,
            generator=generator,
        )

    def prompt_pieces(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[tuple[str, ...], ...]:
        """Per sample, per prompt row of the context: the text its token adds to the decoded prompt ("" for special
        tokens and padding), by incremental decoding with the processor's tokenizer."""
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if tokenizer is None or not hasattr(tokenizer, "decode"):
            raise ValueError(f"{self.pruner!r} reads the prompt's words: give PrunedVLM a processor with a tokenizer")
        ids, mask = self.adapter.prompt_ids(input_ids, attention_mask)
        rows = []
        for sample, real in zip(ids.tolist(), mask.tolist(), strict=True):
            pieces, text, seen = [], "", []
            for token, is_real in zip(sample, real, strict=True):
                if is_real:
                    seen.append(token)
                decoded = tokenizer.decode(seen, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                pieces.append(decoded[len(text) :] if is_real and decoded.startswith(text) else "")
                text = decoded if decoded.startswith(text) else text
            rows.append(tuple(pieces))
        return tuple(rows)

    @torch.no_grad()
    def prepare(self, input_ids: Tensor, attention_mask: Tensor | None = None, **inputs: Any) -> Prepared:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        check_batch(input_ids, attention_mask, self.adapter.image_token_id, inputs)
        vision = self.adapter.encode_images(**inputs)
        if vision.image_tokens.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"{vision.image_tokens.shape[0]} images for {input_ids.shape[0]} prompts: "
                "steprune prunes exactly one image per prompt"
            )
        ctx = self.context(input_ids, attention_mask, vision)
        result = self.pruner.select(ctx)
        spliced = self.adapter.splice(input_ids, attention_mask, vision, result, self.position_policy, **inputs)
        return Prepared(spliced, result, ctx, vision)

    def _in_llm(self, prepared: Prepared) -> InLLMPruning | contextlib.nullcontext:
        drops = self.pruner.layer_drops(prepared.context, self.adapter.num_layers)
        if not drops:
            return contextlib.nullcontext()
        return InLLMPruning(self.adapter.decoder, drops, prepared.spliced.image_slots, prepared.spliced.attention_mask)

    @staticmethod
    def _reported(prepared: Prepared, session: InLLMPruning | None) -> tuple[list[tuple[int, int]], float]:
        """(visual tokens per stage, selection FLOPs of the whole batch) of one pruned prefill."""
        stages = session.kept_tokens if session else [(0, int(prepared.result.lengths.max()))]
        flops = prepared.result.selection_flops + (session.flops[0] if session else 0.0)
        return stages, flops

    @torch.no_grad()
    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None, **inputs: Any) -> PrunedOutput:
        prepared = self.prepare(input_ids, attention_mask, **inputs)
        with self._in_llm(prepared) as session:
            out = self.model(**prepared.spliced.model_kwargs(), use_cache=False)
        stages, flops = self._reported(prepared, session)
        return PrunedOutput(out.logits, prepared.result, stages, flops)

    @torch.no_grad()
    def selection_report(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **inputs: Any
    ) -> SelectionReport:
        """The stages and selection FLOPs `__call__` reports, running only what the selection needs.

        A method that selects before the LLM stops after `prepare` (vision tower + selection): no LLM forward.
        An in-LLM method chooses inside the prefill, so the LLM runs (logits for the last position only).
        """
        prepared = self.prepare(input_ids, attention_mask, **inputs)
        in_llm = self._in_llm(prepared)
        session = None
        if isinstance(in_llm, InLLMPruning):
            with in_llm as session:
                self.model(**prepared.spliced.model_kwargs(), use_cache=False, logits_to_keep=1)
        stages, flops = self._reported(prepared, session)
        return SelectionReport(prepared.result, stages, flops)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, **inputs_and_generation: Any) -> Tensor:
        """Greedy (or any HF) generation with KV cache; returns only the new tokens (B, T)."""
        vision_keys = {"pixel_values", "image_grid_thw", "mm_token_type_ids", "image_sizes"}
        inputs = {k: v for k, v in inputs_and_generation.items() if k in vision_keys}
        gen_kwargs = {k: v for k, v in inputs_and_generation.items() if k not in vision_keys}
        gen_kwargs.setdefault("do_sample", False)
        prepared = self.prepare(input_ids, attention_mask, **inputs)
        with self._in_llm(prepared):
            return self.model.generate(**prepared.spliced.model_kwargs(), **gen_kwargs)
