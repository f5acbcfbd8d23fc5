"""Test inputs: random images and left-padded chat batches for the tiny models."""

from __future__ import annotations

import numpy as np
import PIL.Image

QUESTIONS = ("What colour is it?", "How many objects are there in the whole scene today?")


def random_images(count: int, size: int = 32, seed: int = 0) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def chat_prompt(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def make_inputs(processor, questions=QUESTIONS, size: int = 32, seed: int = 0):
    """A left-padded batch (prompts of different lengths), one image per prompt."""
    texts = [chat_prompt(processor, q) for q in questions]
    return processor(images=random_images(len(texts), size, seed), text=texts, return_tensors="pt", padding=True)


def select_sample(inputs: dict, b: int) -> dict:
    """Sample b of a processor batch, alone, with its left padding removed."""
    real = inputs["attention_mask"][b].bool()
    single = {
        "input_ids": inputs["input_ids"][b][real][None],
        "attention_mask": inputs["attention_mask"][b][real][None],
    }
    if "image_grid_thw" in inputs:
        grid = inputs["image_grid_thw"]
        per = int(grid[b].prod())
        single["pixel_values"] = inputs["pixel_values"][b * per : (b + 1) * per]
        single["image_grid_thw"] = grid[b : b + 1]
        single["mm_token_type_ids"] = inputs["mm_token_type_ids"][b][real][None]
    else:
        single["pixel_values"] = inputs["pixel_values"][b : b + 1]
    return single


def write_instruct_fixture(root, count: int, seed: int = 0) -> list[dict]:
    """A saved tiny LLaVA in root/base and `count` LLaVA-Instruct records with PNGs in root/images."""
    from steprune.backbones.tiny import tiny_llava

    model, processor = tiny_llava()
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    (root / "images").mkdir()
    records = []
    for i, image in enumerate(random_images(count, 32, seed=seed)):
        image.save(root / "images" / f"{i}.png")
        turns = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "red"}]
        records.append({"id": str(i), "image": f"{i}.png", "conversations": turns})
    return records


def write_micro_base(path):
    """Save a tiny random LLaVA (2 text layers) + processor at `path`, the way a real checkpoint is saved."""
    from steprune.backbones.tiny import tiny_llava

    model, processor = tiny_llava(text_layers=2)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
