"""`--model steprune` for lmms-eval: a `PrunedVLM` (LLaVA-1.5 or Qwen2.5-VL + any steprune method) behind
lmms-eval's simple-model interface. Needs `pip install "steprune[lmms]"`; registered by the entry point in
pyproject.toml (see `steprune.integrations.lmms`).

    lmms-eval eval --model steprune --tasks pope --batch_size 8 \
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=mmtok,budget=64
    # StepPrune: method=steprune,selector=<dir | hub id | .safetensors>  (adaptive K: budget is its cap)
    # also: text_free=true, position_policy=keep_original|contiguous, seed=0, dtype=bfloat16, and any keyword of
    # the method's constructor (e.g. method=fastv,layer=2)

- Requests run in lmms-eval's order, `batch_size` at a time within one task and one set of generation
  kwargs (no length sorting: a batch holds the same questions as `steprune eval`'s). One image per prompt
  (steprune prunes exactly one); a prompt without an image runs the unpruned model on its text.
- `generate_until` decodes greedily unless the task asks for temperature > 0; `until` cuts the text.
- `loglikelihood` returns sum log p(continuation | context) over the pruned sequence and whether greedy
  decoding reproduces the continuation. lmms-eval 0.7.3's `unwrap_generation_output` turns a returned
  `(float, bool)` into its string (its bug; multiple-choice tasks then fail): when the installed lmms-eval
  does that, each pair is returned inside lmms-eval's own `GenerationResult`, whose `text` it passes through
  untouched. Nothing of lmms-eval is patched.
- Kept-token statistics (mean/min/max K, visual tokens before pruning, kept ratio, selection GFLOPs per
  question) go through lmms-eval's `log_metrics`, so the results JSON carries them under `throughput` as
  `avg_kept_tokens_mean`, ... (averaged over the request lists of the run: one per task and request type),
  and `self.kept_token_stats` keeps each list's. With `kept_stats=false` `generate_until` skips the extra
  selection pass they cost (vision tower + selection; an in-LLM method also re-runs its prefill).
- One process: no accelerate / multi-GPU sharding of requests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance, unwrap_generation_output
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from loguru import logger
from tqdm import tqdm

from steprune.integrations.lmms.scoring import (
    KeptTokens,
    chat_prompt,
    continuation_lengths,
    continuation_logprobs,
    cut_at_stops,
)
from steprune.pruned_vlm import PrunedVLM

# lmms-eval 0.7.3 stringifies a (float, bool) loglikelihood answer; a version that fixes it keeps the tuple.
LOGLIKELIHOOD_IS_STRINGIFIED = not isinstance(unwrap_generation_output((0.0, True))[0], tuple)
_UNSET = object()


def _none(value: Any) -> Any:
    """'none' / 'None' from --model_args means None."""
    return None if isinstance(value, str) and value.lower() == "none" else value


class StepruneLMM(lmms):
    """lmms-eval simple model: a frozen HF MLLM whose visual tokens a steprune method prunes."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        method: Any = _UNSET,
        budget: Any = 64,
        selector: str | None = None,
        text_free: bool = False,
        position_policy: str = "keep_original",
        seed: int = 0,
        dtype: str = "auto",
        batch_size: int | str = 1,
        device: str | None = None,
        max_new_tokens: int = 128,
        kept_stats: bool = True,
        max_batch_size: Any = None,  # lmms-eval passes it to every model; there is no auto batch size here
        **method_kwargs: Any,
    ) -> None:
        super().__init__()
        method = ("steprune" if selector is not None else "mmtok") if method is _UNSET else method
        if selector is not None:
            method_kwargs["selector"] = str(selector)
        budget = _none(budget)
        if isinstance(budget, float) and budget.is_integer():
            budget = int(budget)
        self.batch_size_per_gpu = int(batch_size) if str(batch_size).isdigit() else 1
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        loaded = PrunedVLM.from_pretrained(
            str(pretrained),
            method=str(method),
            budget=budget,
            dtype=dtype,
            device_map=None if self._device.type == "cpu" else {"": str(self._device)},
            position_policy=position_policy,
            text_free=bool(text_free),
            **method_kwargs,
        )
        vlm = PrunedVLM(
            loaded.model, loaded.processor, loaded.pruner, budget, position_policy, bool(text_free), seed=int(seed)
        )
        self._setup(vlm, max_new_tokens, kept_stats)
        logger.info(f"steprune: {pretrained} with {vlm.pruner!r}, budget {budget}, batch {self.batch_size}")

    @classmethod
    def from_vlm(
        cls, vlm: PrunedVLM, batch_size: int = 1, max_new_tokens: int = 128, kept_stats: bool = True
    ) -> StepruneLMM:
        """Wrap a `PrunedVLM` built in Python (e.g. for `lmms_eval.evaluator.simple_evaluate(model=...)`)."""
        self = cls.__new__(cls)
        lmms.__init__(self)
        self.batch_size_per_gpu = int(batch_size)
        self._device = vlm.model.device
        self._setup(vlm, max_new_tokens, kept_stats)
        return self

    def _setup(self, vlm: PrunedVLM, max_new_tokens: int, kept_stats: bool) -> None:
        if vlm.processor is None:
            raise ValueError("the lmms-eval model needs a PrunedVLM with its processor")
        self.vlm = vlm
        self.processor = vlm.processor
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"  # continuations and prompts end at the right edge of every row
        self.max_new_tokens = int(max_new_tokens)
        self.kept_stats = bool(kept_stats)
        self.kept_token_stats: list[dict[str, Any]] = []
        self._generated = 0  # new tokens of the current generate_until list
        self.config = vlm.model.config  # lmms-eval names the run after config._name_or_path

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    # ------------------------------------------------------------------------------------------------
    def _chunks(self, requests: list[Instance], key) -> Iterator[list[tuple[int, tuple]]]:
        """(position, args) batches of `batch_size`, in request order, each within one `key` group."""
        groups: dict[str, list[tuple[int, tuple]]] = {}
        for position, request in enumerate(requests):
            groups.setdefault(key(request.args), []).append((position, request.args))
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                yield members[start : start + self.batch_size]

    def _images(self, doc_to_visual, doc_id, task, split) -> list:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = [v for v in (visuals or []) if v is not None]
        if len(visuals) > 1:
            raise ValueError(
                f"{task} doc {doc_id} has {len(visuals)} images: steprune prunes exactly one image per prompt"
            )
        return [v.convert("RGB") for v in visuals]

    def _inputs(self, prompts: list[str], images: list) -> dict[str, torch.Tensor]:
        kwargs = {"images": images} if images else {}
        batch = self.processor(text=prompts, return_tensors="pt", padding=True, **kwargs)
        dtype = self.vlm.model.dtype
        return {
            k: (v.to(self._device, dtype) if v.is_floating_point() else v.to(self._device))
            for k, v in dict(batch).items()
            if isinstance(v, torch.Tensor)
        }

    def _record(self, stats: KeptTokens, inputs: dict[str, torch.Tensor], result, stages, flops) -> None:
        visual = (inputs["input_ids"] == self.vlm.adapter.image_token_id).sum(1)  # (B,) before pruning
        stats.update(result.lengths, visual, stages, flops)

    def _report(self, stats: KeptTokens, request_type: str, tasks: set[str], seconds: float, requests: int) -> None:
        """Kept-token statistics of one request list: logged, kept in `kept_token_stats`, and handed to
        lmms-eval's `log_metrics` (results JSON, `throughput`) with the list's time and generated tokens."""
        summary = stats.summary()
        self.kept_token_stats.append({"request_type": request_type, "tasks": sorted(tasks), **summary})
        logger.info(f"steprune kept tokens ({request_type}, {', '.join(sorted(tasks))}): {json.dumps(summary)}")
        extra = {k: v for k, v in summary.items() if k != "pruned_questions"}  # lmms-eval averages over lists
        tokens, self._generated = self._generated, 0
        speed = tokens / seconds if seconds > 0 else 0.0
        log_metrics(seconds, tokens, speed, additional_metrics={**extra, "total_requests": requests})

    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        stats, tasks, start = KeptTokens(), set(), time.perf_counter()

        def key(args: tuple) -> str:
            return f"{args[4]}|{args[5]}|{json.dumps(args[1], sort_keys=True, default=str)}"

        for chunk in tqdm(list(self._chunks(requests, key)), desc="steprune generate", disable=self.rank != 0):
            positions, args = zip(*chunk, strict=True)
            contexts, gen_kwargs, to_visual, doc_ids, task, split = zip(*args, strict=True)
            tasks.add(task[0])
            images = [self._images(to_visual[0], d, task[0], split[0]) for d in doc_ids]
            for sub in _by_image_presence(images):  # prompts with and without an image never share a batch
                texts = self._generate([contexts[i] for i in sub], [images[i] for i in sub], dict(gen_kwargs[0]), stats)
                for i, text in zip(sub, texts, strict=True):
                    out[positions[i]] = text
        self._report(stats, "generate_until", tasks, time.perf_counter() - start, len(requests))
        return [text or "" for text in out]

    def _generate(self, contexts: list[str], images: list[list], gen: dict, stats: KeptTokens) -> list[str]:
        has_image = bool(images[0])
        prompts = [chat_prompt(self.processor, c, len(im)) for c, im in zip(contexts, images, strict=True)]
        inputs = self._inputs(prompts, [im[0] for im in images] if has_image else [])
        until = gen.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen.get("temperature") or 0.0)
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(gen.get("max_new_tokens") or self.max_new_tokens),
            "do_sample": temperature > 0 or bool(gen.get("do_sample", False)),
            "num_beams": int(gen.get("num_beams") or 1),
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if kwargs["do_sample"]:
            kwargs.update(temperature=temperature or 1.0, top_p=gen.get("top_p") or 1.0)
        if not has_image:  # nothing to prune: the model itself
            new = self.vlm.model.generate(**inputs, **kwargs)[:, inputs["input_ids"].shape[1] :]
        else:
            if self.kept_stats:
                report = self.vlm.selection_report(**inputs)
                self._record(stats, inputs, report.result, report.visual_tokens_per_stage, report.selection_flops)
            new = self.vlm.generate(**inputs, **kwargs)
        self._generated += int((new != self.tokenizer.pad_token_id).sum())
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [cut_at_stops(t, until) for t in texts]

    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[Any]:
        out: list[Any] = [None] * len(requests)
        stats, tasks, start = KeptTokens(), set(), time.perf_counter()
        for chunk in tqdm(
            list(self._chunks(requests, lambda a: f"{a[4]}|{a[5]}")), desc="steprune loglikelihood", disable=self.rank
        ):
            positions, args = zip(*chunk, strict=True)
            contexts, targets, to_visual, doc_ids, task, split = zip(*args, strict=True)
            tasks.add(task[0])
            docs = [self.task_dict[task[0]][split[0]][d] for d in doc_ids]
            continuations = [t if isinstance(t, str) else str(t(doc)) for t, doc in zip(targets, docs, strict=True)]
            images = [self._images(to_visual[0], d, task[0], split[0]) for d in doc_ids]
            for sub in _by_image_presence(images):
                scored = self._score(
                    [contexts[i] for i in sub], [continuations[i] for i in sub], [images[i] for i in sub], stats
                )
                for i, pair in zip(sub, scored, strict=True):
                    out[positions[i]] = GenerationResult(text=pair) if LOGLIKELIHOOD_IS_STRINGIFIED else pair
        self._report(stats, "loglikelihood", tasks, time.perf_counter() - start, len(requests))
        return out

    def _score(self, contexts: list[str], continuations: list[str], images: list[list], stats: KeptTokens):
        has_image = bool(images[0])
        prompts = [chat_prompt(self.processor, c, len(im)) for c, im in zip(contexts, images, strict=True)]
        lengths = continuation_lengths(self.tokenizer, prompts, continuations)
        full = [p + c for p, c in zip(prompts, continuations, strict=True)]
        inputs = self._inputs(full, [im[0] for im in images] if has_image else [])
        if has_image:
            output = self.vlm(**inputs)
            self._record(stats, inputs, output.result, output.visual_tokens_per_stage, output.selection_flops)
            logits = output.logits
        else:
            logits = self.vlm.model(**inputs).logits
        logprob, greedy = continuation_logprobs(logits, inputs["input_ids"], lengths)
        return [(float(lp), bool(g)) for lp, g in zip(logprob.tolist(), greedy.tolist(), strict=True)]

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("steprune's lmms-eval model answers single-round tasks only")


def _by_image_presence(images: list[list]) -> list[list[int]]:
    """Positions of the prompts with an image, then of those without (empty groups dropped)."""
    groups = [[i for i, im in enumerate(images) if im], [i for i, im in enumerate(images) if not im]]
    return [g for g in groups if g]
