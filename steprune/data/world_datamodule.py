"""The built-in world as a LightningDataModule: records generated on the fly, collated by the processor.

    dm = WorldDataModule(backbone="artifacts/base", batch_size=32, val_size=256)
    dm = WorldDataModule(backbone="artifacts/base", world={"max_objects": 4})   # difficulty knobs

Training records are an endless deterministic stream: batch i always holds records
[start + i*B, start + (i+1)*B) of the train split, so a resumed run sees exactly the records it would
have seen (`start` follows the trainer's step on resume). Val/test are fixed prefixes of their splits.

The base recipe (`make base`) trains instead on a fixed pool of records (`world_records`) seen several
times (`ChatPool`), each pass asking different questions about the same scene in one multi-turn
conversation (`chat_turns`), collated by `MultiTurnCollator` with labels on the answers only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from steprune.backbones.splice import full_sequence_positions
from steprune.data.collate import IGNORE_INDEX, InstructCollator, first_exchange
from steprune.data.world import (
    CAPTION_KIND,
    GENERATORS,
    LOCATE_KIND,
    QUESTION_KINDS,
    Scene,
    WorldConfig,
    generate_record,
    generate_records,
)


class WorldStream(IterableDataset):
    """Endless train records, from index `start` on."""

    def __init__(self, cfg: WorldConfig, seed: int, start: int = 0, split: str = "train") -> None:
        self.cfg, self.seed, self.start, self.split = cfg, seed, start, split

    def __iter__(self) -> Iterator[dict[str, Any]]:
        index = self.start
        while True:
            yield generate_record(self.split, index, self.cfg, self.seed)
            index += 1


def world_config(world: dict[str, Any] | None) -> WorldConfig:
    """A WorldConfig from a dict of knobs (YAML-friendly); tuples may be given as lists."""
    knobs = dict(world or {})
    for key in ("colors", "shapes", "glyph_shapes"):
        if key in knobs:
            knobs[key] = tuple(knobs[key])
    return WorldConfig(**knobs)


class WorldDataModule(L.LightningDataModule):
    """Train stream + fixed val/test prefixes of the built-in world, for the backbone in `backbone`."""

    def __init__(
        self,
        backbone: str,
        world: dict[str, Any] | None = None,
        seed: int = 0,
        batch_size: int = 32,
        val_size: int = 256,
        val_batch_size: int = 64,
        include_captions: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if world is None:  # the world the base model was trained on, when it says so
            info = Path(backbone) / "build_info.json"
            world = json.loads(info.read_text()).get("world") if info.is_file() else None
        self.cfg = world_config(world)
        if not include_captions:
            self.cfg = WorldConfig(**{**self.cfg.__dict__, "caption_prob": 0.0})
        self._processor: Any = None
        self.start = 0

    @property
    def processor(self) -> Any:
        if self._processor is None:
            from transformers import AutoProcessor

            from steprune.base_location import resolve_pretrained

            self._processor = AutoProcessor.from_pretrained(resolve_pretrained(self.hparams.backbone))
        return self._processor

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        step = trainer.global_step if trainer is not None else 0
        stream = WorldStream(self.cfg, self.hparams.seed, start=self.start + step * self.hparams.batch_size)
        return DataLoader(
            stream,
            batch_size=self.hparams.batch_size,
            collate_fn=InstructCollator(self.processor),
            num_workers=self.hparams.num_workers,
        )

    def _fixed(self, split: str, size: int) -> DataLoader:
        records = generate_records(split, size, self.cfg, self.hparams.seed)
        # its own generator: iterating it (a validation) must not draw from the training RNG, or a run resumed
        # from a checkpoint written just before a validation would continue on a different noise stream
        return DataLoader(
            records,
            batch_size=self.hparams.val_batch_size,
            collate_fn=InstructCollator(self.processor, "eval"),
            generator=torch.Generator().manual_seed(self.hparams.seed),
        )

    def val_dataloader(self) -> DataLoader:
        return self._fixed("val", self.hparams.val_size)

    def test_dataloader(self) -> DataLoader:
        return self._fixed("test", self.hparams.val_size)


# --------------------------------------------------------------------------------------------------
# A fixed pool of records with multi-turn conversations: what the base recipe (`make base`) trains on.
def world_records(
    split: str, num: int, cfg: WorldConfig, seed: int, processes: int = 1, start: int = 0
) -> list[dict[str, Any]]:
    """`generate_records(split, num, cfg, seed, start)`, optionally split over `processes` (same records, same
    order)."""
    if processes <= 1 or num < 64:
        return generate_records(split, num, cfg, seed, start)
    import multiprocessing as mp

    bounds = [start + num * i // processes for i in range(processes + 1)]
    jobs = [(split, bounds[i + 1] - bounds[i], cfg, seed, bounds[i]) for i in range(processes)]
    with mp.get_context("fork").Pool(processes) as pool:
        parts = pool.starmap(generate_records, jobs)
    return [r for part in parts for r in part]


def _turn_rng(seed: int, record_id: str, view: int) -> np.random.Generator:
    digest = hashlib.sha256(f"turns/{seed}/{record_id}/{view}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def chat_turns(
    record: dict[str, Any],
    cfg: WorldConfig,
    turns: int,
    caption_prob: float = 0.0,
    seed: int = 0,
    view: int = 0,
    locate_turns: int = 0,
) -> list[tuple[str, str]]:
    """(question, answer) pairs about one record's scene: its own exchange first, then further distinct
    questions drawn with the world's generators (answers derived from the scene), `turns` in all. With
    probability `caption_prob` one of them is the `describe` caption; the last `locate_turns` of the `turns`
    are training-only "Where is the <object>?" questions (fewer when the scene has fewer unique objects)."""
    assert 0 <= locate_turns < max(turns, 1), f"locate_turns {locate_turns} must leave the record's own turn"
    pairs = [first_exchange(record)]
    if turns <= 1:
        return pairs
    rng = _turn_rng(seed, str(record.get("id", "")), view)
    scene = Scene.from_json(record["scene"])
    weights = np.array([cfg.kind_weights.get(k, 0.0) for k in QUESTION_KINDS], dtype=np.float64)
    weights /= weights.sum()
    want_caption = record.get("kind") != CAPTION_KIND and rng.random() < caption_prob
    seen = {pairs[0][0]}

    def draw(kind: str) -> None:
        qa = GENERATORS[kind](scene, rng, cfg)
        if qa is not None and qa.question not in seen:
            seen.add(qa.question)
            pairs.append((qa.question, qa.answer))

    for _ in range(4 * turns):  # spare draws: not every kind fits every scene, repeats are skipped
        if len(pairs) >= turns - locate_turns:
            break
        draw(CAPTION_KIND if want_caption else QUESTION_KINDS[int(rng.choice(len(QUESTION_KINDS), p=weights))])
        want_caption = False
    regular = len(pairs)
    for _ in range(4 * locate_turns):
        if len(pairs) >= regular + locate_turns:
            break
        draw(LOCATE_KIND)
    return pairs


def chat_messages(pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Chat-template messages of a conversation; the image goes with the first user turn."""
    messages: list[dict[str, Any]] = []
    for i, (question, answer) in enumerate(pairs):
        content = ([{"type": "image"}] if i == 0 else []) + [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def answer_labels(input_ids: Tensor, marker: Sequence[int], eos_id: int) -> Tensor:
    """(B, L) labels: the tokens after each `marker` (the ids of "ASSISTANT:") up to and including the
    next eos; everything else IGNORE_INDEX."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    m, length = len(marker), input_ids.shape[1]
    windows = input_ids.unfold(1, m, 1)  # (B, L - m + 1, m)
    starts = (windows == torch.tensor(list(marker), dtype=input_ids.dtype)).all(-1)  # (B, L - m + 1)
    is_eos = input_ids == eos_id  # (B, L)
    for b, s in starts.nonzero().tolist():  # one entry per assistant turn
        ends = is_eos[b, s + m :].nonzero()
        stop = s + m + int(ends[0]) + 1 if len(ends) else length
        labels[b, s + m : stop] = input_ids[b, s + m : stop]
    return labels


class MultiTurnCollator:
    """(image, [(question, answer), ...]) items -> input_ids / attention_mask / position_ids / pixel_values /
    labels, with the processor and its chat template; loss only on the answers (and their eos)."""

    def __init__(self, processor: Any, marker: str = " ASSISTANT:") -> None:
        self.processor = processor
        tokenizer = processor.tokenizer  # the marker as it is tokenized inside the template: after a space
        self.marker = tokenizer(marker, add_special_tokens=False)["input_ids"]
        self.eos_id = tokenizer.eos_token_id
        if not self.marker or self.eos_id is None:
            raise ValueError("the tokenizer needs an eos token and must encode the assistant marker")

    def __call__(self, items: Sequence[tuple[Any, Sequence[tuple[str, str]]]]) -> dict[str, Tensor]:
        images = [image.convert("RGB") for image, _ in items]
        texts = [self.processor.apply_chat_template(chat_messages(pairs)) for _, pairs in items]
        batch = dict(self.processor(images=images, text=texts, return_tensors="pt", padding=True))
        batch["labels"] = answer_labels(batch["input_ids"], self.marker, self.eos_id)
        batch["position_ids"] = full_sequence_positions(batch["attention_mask"])  # as generate numbers them
        return batch


class ChatPool(Dataset):
    """`views` passes over a fixed record pool; pass v asks `turns` different questions about each scene
    (the last `locate_turns` of them "Where is ...?", see `chat_turns`)."""

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        cfg: WorldConfig,
        turns: int = 1,
        caption_prob: float = 0.0,
        views: int = 1,
        seed: int = 0,
        locate_turns: int = 0,
    ) -> None:
        self.records, self.cfg, self.turns, self.caption_prob = records, cfg, turns, caption_prob
        self.views, self.seed, self.locate_turns = views, seed, locate_turns
        self._pairs: dict[int, list[tuple[str, str]]] = {}  # item -> its turns, drawn once (they are deterministic)

    def __len__(self) -> int:
        return len(self.records) * self.views

    def __getitem__(self, i: int) -> tuple[Any, list[tuple[str, str]]]:
        view, j = divmod(i, len(self.records))
        record = self.records[j]
        if i not in self._pairs:
            self._pairs[i] = chat_turns(
                record, self.cfg, self.turns, self.caption_prob, self.seed, view, self.locate_turns
            )
        return record["image"], self._pairs[i]

    def text_lengths(self) -> list[int]:
        """Characters of each item's questions and answers: a proxy for its token count (length grouping)."""
        return [sum(len(q) + len(a) for q, a in self[i][1]) for i in range(len(self))]
