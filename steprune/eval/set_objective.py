"""The removal surrogate's training objective evaluated on each method's hard set: does the optimiser find it?

    python -m steprune.eval.set_objective --base artifacts/base --budget 16 --batches 8 \\
        --methods mmtok visionzip holov random uniform --selector artifacts/selector.safetensors

For every method, on the same fresh training-stream batches: the tokens it keeps at `budget` for the prompt without
its answer (`steprune.training.teacher.teacher_set`; the `steprune` pruner with `--selector` keeps its own K), then
the LM cross-entropy on the answer tokens with the other tokens removed through the attention bias, and
KL(full-token model ‖ pruned) on the same tokens — the two terms `surrogate: removal, kd: 1` trains on. A learned
selector whose own set costs more than a training-free method's set has not found its objective's minimum
(reports/stepprune_offset_teacher.md §3). Prints one JSON object {method: {"ce", "kl", "k"}}.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from steprune.pruned_vlm import PrunedVLM
from steprune.pruners.stepprune import StepPrunePruner
from steprune.training.stepprune_module import StepPruneModule
from steprune.training.teacher import teacher_set


def set_objective(
    module: StepPruneModule, batches: Iterable[dict[str, Tensor]], methods: dict[str, PrunedVLM], budget: int
) -> dict[str, dict[str, float]]:
    """Mean over `batches` of CE, KL and K of each method's hard set (no grad)."""
    sums = {m: {"ce": 0.0, "kl": 0.0, "k": 0.0} for m in methods}
    count = 0
    with torch.no_grad():
        for batch in batches:
            vision_inputs = {k: v for k, v in batch.items() if k in ("pixel_values", "image_grid_thw")}
            vision = module.adapter.encode_images(**vision_inputs)
            prompt = batch["labels"] == -100
            full = module._full_logprobs(batch, vision)  # (B, S-1, V)
            for name, vlm in methods.items():
                keep = teacher_set(vlm, batch["input_ids"], batch["attention_mask"], prompt, vision, budget)  # (B, N)
                lm = module._lm_removal(batch, {"features": vision.vision_features, "keep": keep.float()})
                sums[name]["ce"] += float(lm.loss)
                sums[name]["kl"] += float(module._distillation(batch, lm.logits, full))
                sums[name]["k"] += float(keep.sum(1).float().mean())
            count += 1
    if count == 0:
        raise ValueError("set_objective needs at least one batch")
    return {m: {k: v / count for k, v in d.items()} for m, d in sums.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    from steprune.data.world_datamodule import WorldDataModule

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="artifacts/base")
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data-seed", type=int, default=7, help="a seed the selector was not trained on")
    parser.add_argument("--methods", nargs="+", default=["mmtok", "visionzip", "holov", "random", "uniform"])
    parser.add_argument("--selector", default=None, help="a trained selector file: its own set is the `steprune` row")
    args = parser.parse_args(argv)
    module = StepPruneModule(args.base, surrogate="removal", kd=1.0).eval()
    methods: dict[str, PrunedVLM] = {}
    if args.selector is not None:
        methods["steprune"] = PrunedVLM(module.vlm, module.processor, method=StepPrunePruner(args.selector))
    for name in args.methods:
        methods[name] = PrunedVLM(module.vlm, module.processor, method=name, budget=args.budget)
    data = WorldDataModule(args.base, seed=args.data_seed, batch_size=args.batch_size)
    stream = iter(data.train_dataloader())
    result = set_objective(module, (next(stream) for _ in range(args.batches)), methods, args.budget)
    print(json.dumps({m: {k: round(v, 4) for k, v in d.items()} for m, d in result.items()}, indent=1))
    return result


if __name__ == "__main__":
    main()
