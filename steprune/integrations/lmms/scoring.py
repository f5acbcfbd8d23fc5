"""What the lmms-eval model computes besides the model calls: chat prompts, continuation log-probabilities,
stop strings and the kept-token statistics. Plain torch + the processor; no lmms_eval import (unit-tested in
the default venv).

    prompt = chat_prompt(processor, "Is there a red square?", images=1)
    logprob, greedy = continuation_logprobs(logits, input_ids, lengths)   # (B,) each, right-aligned continuations
    stats = KeptTokens(); stats.update(result.lengths, visual, stages, flops); stats.summary()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

IMAGE_TAG = "<image>"


def chat_prompt(processor: Any, context: str, images: int) -> str:
    """The user turn `context` with `images` images before its text, rendered by the processor's chat template
    with the generation prompt — the same messages `steprune.data.collate.InstructCollator` builds."""
    text = context.replace(IMAGE_TAG, "").strip() if images else context
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(images)]
    content.append({"type": "text", "text": text})
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def continuation_lengths(tokenizer: Any, prompts: Sequence[str], continuations: Sequence[str]) -> list[int]:
    """Tokens the continuation adds to each prompt: len(tok(prompt + continuation)) - len(tok(prompt))."""
    full = tokenizer([p + c for p, c in zip(prompts, continuations, strict=True)])["input_ids"]
    bare = tokenizer(list(prompts))["input_ids"]
    lengths = [len(f) - len(b) for f, b in zip(full, bare, strict=True)]
    bad = [i for i, n in enumerate(lengths) if n < 0]
    assert not bad, f"continuations {bad} shorten their prompts when tokenized: {[continuations[i] for i in bad]!r}"
    return lengths


def continuation_logprobs(logits: Tensor, input_ids: Tensor, lengths: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Sum of log p(continuation) and whether greedy decoding reproduces it, per row.

    logits (B, L_out, V) over the (possibly shortened) sequence, input_ids (B, L_in) left-padded: the last
    `lengths[b]` tokens of row b are its continuation, and row b's logits at position j predict token j + 1
    (the pruned visual tokens sit before the text, so positions counted from the right agree).
    """
    b, l_out, _ = logits.shape
    n = torch.as_tensor(list(lengths), dtype=torch.long, device=logits.device)  # (B,)
    width = int(n.max()) if b else 0
    if width == 0:
        return torch.zeros(b, dtype=torch.float64), torch.ones(b, dtype=torch.bool)
    assert width < min(l_out, input_ids.shape[1]), f"continuation of {width} tokens fills the whole sequence"
    scores = logits[:, l_out - width - 1 : l_out - 1].float().log_softmax(-1)  # (B, W, V)
    targets = input_ids[:, -width:].to(logits.device)  # (B, W)
    mask = torch.arange(width, device=logits.device) >= (width - n)[:, None]  # (B, W): this row's continuation
    picked = scores.gather(-1, targets[..., None]).squeeze(-1)  # (B, W)
    logprob = (picked * mask).sum(-1).double()
    greedy = ((scores.argmax(-1) == targets) | ~mask).all(-1)
    return logprob.cpu(), greedy.cpu()


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first of `stops` (lmms-eval's `until`)."""
    for stop in stops:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text


def kept_per_sample(lengths: Tensor, stages: Sequence[tuple[int, int]]) -> Tensor:
    """(B,) visual tokens a question kept: the pre-LLM selection's length, or for in-LLM methods the tokens
    alive after the last drop (as `steprune.eval.world_accuracy` counts K)."""
    if len(stages) > 1:
        return torch.full((len(lengths),), int(stages[-1][1]))
    return lengths.detach().cpu().long()


class KeptTokens:
    """Running kept-token statistics of one request list (reported in lmms-eval's results under `throughput`)."""

    def __init__(self) -> None:
        self.kept: list[int] = []
        self.visual: list[int] = []
        self.selection_flops = 0.0

    def update(self, lengths: Tensor, visual: Tensor, stages: Sequence[tuple[int, int]], flops: float) -> None:
        """lengths (B,) the selection's K, visual (B,) the image's tokens before pruning, stages the in-LLM plan,
        flops the whole batch's selection cost."""
        self.kept += kept_per_sample(lengths, stages).tolist()
        self.visual += visual.detach().cpu().long().tolist()
        self.selection_flops += float(flops)

    def summary(self) -> dict[str, float]:
        if not self.kept:
            return {}
        n = len(self.kept)
        return {
            "kept_tokens_mean": sum(self.kept) / n,
            "kept_tokens_min": float(min(self.kept)),
            "kept_tokens_max": float(max(self.kept)),
            "visual_tokens_mean": sum(self.visual) / n,
            "kept_ratio": sum(self.kept) / max(sum(self.visual), 1),
            "selection_gflops_per_question": self.selection_flops / n / 1e9,
            "pruned_questions": float(n),
        }
