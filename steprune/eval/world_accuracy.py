"""Exact-match accuracy on built-in-world records, per question kind, batched through `PrunedVLM`.

    records = generate_records("test", 500, WorldConfig(), seed=0)
    scores = world_accuracy(PrunedVLM.from_pretrained("artifacts/base", method="identity"), records)
    scores["overall"], scores["per_kind"]["counting"], scores["k_mean"]

`blank=True` replaces every image by a uniform grey one: the blind baseline (the same model, no image).
For in-LLM methods K is the count alive after the last drop and `stages` the (layer, tokens alive) plan.
`correct` keeps every question's 0/1 exact match in record order (the bootstrap intervals resample it) and
`selection_flops` is the selection's own cost per question (mean over the records).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import PIL.Image
import torch
from torchmetrics.aggregation import CatMetric, MeanMetric

from steprune.data.collate import InstructCollator
from steprune.pruned_vlm import PrunedVLM
from steprune.training.stepprune_module import normalise_answer


def world_accuracy(
    vlm: PrunedVLM,
    records: Sequence[dict[str, Any]],
    batch_size: int = 64,
    blank: bool = False,
    max_new_tokens: int = 4,
    progress: Callable[[int], None] = lambda _: None,
) -> dict[str, Any]:
    collate = InstructCollator(vlm.processor, "eval")
    per_kind: dict[str, MeanMetric] = defaultdict(MeanMetric)
    overall, ks = MeanMetric(), CatMetric()
    complexity: list[tuple[int, int]] = []
    stages: list[tuple[int, int]] = []
    correct_all: list[int] = []  # (N,) one 0/1 per record, in record order
    selection_flops = 0.0  # summed over batches (each batch reports its whole-batch cost)
    for start in range(0, len(records), batch_size):
        chunk = list(records[start : start + batch_size])
        if blank:
            chunk = [{**r, "image": PIL.Image.new("RGB", r["image"].size, (128, 128, 128))} for r in chunk]
        batch = collate(chunk)
        inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        out = vlm(**inputs)
        selection_flops += float(out.selection_flops)
        stages = [(int(layer), int(k)) for layer, k in out.visual_tokens_per_stage]  # one schedule per batch
        if len(out.visual_tokens_per_stage) > 1:  # in-LLM: tokens alive after the last drop
            prepared_k = torch.full((len(chunk),), out.visual_tokens_per_stage[-1][1])
        else:
            prepared_k = out.result.lengths
        new = vlm.generate(**inputs, max_new_tokens=max_new_tokens)
        texts = vlm.processor.batch_decode(new, skip_special_tokens=True)
        for text, record, k in zip(texts, chunk, prepared_k.tolist(), strict=True):
            correct = float(normalise_answer(text) == normalise_answer(record["answer"]))
            per_kind[record["kind"]].update(correct)
            overall.update(correct)
            correct_all.append(int(correct))
            complexity.append((int(record.get("num_objects", 0)), int(k)))
        ks.update(prepared_k.float())
        progress(len(chunk))
    k_all = ks.compute()
    return {
        "overall": float(overall.compute()),
        "per_kind": {kind: float(m.compute()) for kind, m in sorted(per_kind.items())},
        "count": len(records),
        "k_mean": float(k_all.mean()),
        "k_min": int(k_all.min()),
        "k_max": int(k_all.max()),
        "objects_and_k": complexity,
        "stages": stages,
        "correct": correct_all,
        "selection_flops": selection_flops / max(len(records), 1),
    }
