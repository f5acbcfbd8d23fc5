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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from steprune.backbones import BackboneAdapter, VisionOutput, adapter_for
from steprune.backbones.in_llm import InLLMPruning
from steprune.backbones.splice import PositionPolicy, SplicedInputs
from steprune.pruners import PRUNERS, PruneContext, Pruner, PruneResult


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
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.adapter: BackboneAdapter = adapter_for(model)
        if isinstance(method, str):
            self.pruner: Pruner = PRUNERS.create(method, **method_kwargs)
        elif isinstance(method, Pruner):
            if method_kwargs:
                raise TypeError("method kwargs are only accepted with a method name")
            self.pruner = method
        else:
            raise TypeError(f"method must be a registered name or a Pruner, got {type(method).__name__}")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)):
            raise TypeError(f"budget must be an int or None, got {type(budget).__name__}")
        if budget is not None and budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
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
        """Load processor + model from a local directory or a hub id (`trust_remote_code` stays off)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if isinstance(method, str):
            PRUNERS.get(method)  # fail fast on a typo, before loading gigabytes
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=False)
        model = AutoModelForImageTextToText.from_pretrained(
            name_or_path, dtype=dtype, device_map=device_map, trust_remote_code=False
        )
        return cls(model, processor, method, budget, position_policy, text_free, **method_kwargs)

    # ------------------------------------------------------------------------------------------------
    def context(self, input_ids: Tensor, attention_mask: Tensor, vision: VisionOutput) -> PruneContext:
        text_embeds, text_mask = self.adapter.prompt_embeddings(input_ids, attention_mask)
        n = vision.image_tokens.shape[1]
        budget = n if self.budget is None else self.budget
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        return PruneContext(
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

    @torch.no_grad()
    def prepare(self, input_ids: Tensor, attention_mask: Tensor | None = None, **inputs: Any) -> Prepared:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
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
