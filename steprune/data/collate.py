"""Collate LLaVA-instruction records into model batches, with the backbone's processor and chat template.

A record is `{"image": PIL.Image, "conversations": [{"from": "human", "value": "<image>\\nQ"},
{"from": "gpt", "value": "A"}], ...}` (the LLaVA-Instruct format; the built-in world writes the same).

    collate = InstructCollator(processor, mode="train")   # prompt + answer, labels on the answer only
    collate = InstructCollator(processor, mode="eval")    # prompt only (left-padded) + `answers`, `kinds`
    loader = DataLoader(records, batch_size=16, collate_fn=collate)

Only the first human/gpt exchange is used; multi-turn records keep their first turn.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

IGNORE_INDEX = -100
IMAGE_TAG = "<image>"


def first_exchange(record: dict[str, Any]) -> tuple[str, str]:
    """(question without the <image> tag, answer) of the record's first human -> gpt exchange."""
    turns = record.get("conversations")
    if not turns or len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
        raise ValueError(f"record {record.get('id', '?')!r}: expected a human turn followed by a gpt turn")
    question = turns[0]["value"].replace(IMAGE_TAG, "").strip()
    return question, turns[1]["value"].strip()


class InstructCollator:
    """Turns records into `input_ids`, `attention_mask`, vision inputs, and `labels` or `answers`."""

    def __init__(self, processor: Any, mode: Literal["train", "eval"] = "train", max_length: int | None = None):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        self.processor = processor
        self.mode = mode
        self.max_length = max_length

    def _messages(self, question: str, answer: str | None) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        exchanges = [first_exchange(r) for r in records]
        images = [r["image"].convert("RGB") for r in records]
        template = self.processor.apply_chat_template
        prompts = [template(self._messages(q, None), add_generation_prompt=True) for q, _ in exchanges]
        answers = [a for _, a in exchanges]
        if self.mode == "eval":
            batch = dict(self.processor(images=images, text=prompts, return_tensors="pt", padding=True))
            batch["answers"] = answers
            batch["kinds"] = [r.get("kind", "") for r in records]
            return batch
        fulls = [template(self._messages(q, a)) for q, a in exchanges]
        for prompt, full in zip(prompts, fulls, strict=True):
            if not full.startswith(prompt):
                raise ValueError("the chat template renders the answer turn in a way that changes the prompt")
        batch = dict(self.processor(images=images, text=fulls, return_tensors="pt", padding=True))
        tokenizer = self.processor.tokenizer
        prompt_lengths = [len(tokenizer(p.replace(IMAGE_TAG, ""))["input_ids"]) for p in prompts]
        full_lengths = [len(tokenizer(f.replace(IMAGE_TAG, ""))["input_ids"]) for f in fulls]
        ids, mask = batch["input_ids"], batch["attention_mask"]
        labels = torch.full_like(ids, IGNORE_INDEX)
        length = ids.shape[1]
        for b, (p_len, f_len) in enumerate(zip(prompt_lengths, full_lengths, strict=True)):
            answer_len = f_len - p_len  # answer tokens sit at the right end (left padding)
            labels[b, length - answer_len :] = ids[b, length - answer_len :]
        labels = labels.masked_fill(mask == 0, IGNORE_INDEX)
        batch["labels"] = labels
        return batch
