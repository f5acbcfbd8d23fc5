"""`steprune eval --suite world`: every method at the paper's pruning ratios on the built-in world.

    steprune eval --suite world                                   # artifacts/base, test split, all methods
    steprune eval --suite world --methods uniform,mmtok --budgets 16 --limit 200
    steprune eval --suite world --methods steprune --weights artifacts/selector.safetensors
    steprune eval --suite world --budgets 4,8,16,32,48 --match flops --figure reports/world_pareto.png
    steprune eval --suite world --weights artifacts/selector.safetensors --reference steprune

For each method x budget: exact-match accuracy overall and per question kind, K (mean/min/max; for
in-LLM methods the tokens left after the last drop), retention = accuracy / unpruned accuracy, and the
analytic prefill TFLOPs per question at the measured mean K (in-LLM methods: through their drop stages), the
selection's own FLOPs included. Accuracy and retention carry 95 % bootstrap intervals over the test questions,
and every row its paired interval of the difference to the budget's reference (`--reference METHOD`, default:
the most accurate baseline at that budget; `steprune.eval.world_compare`). Adaptive methods also get the
Spearman correlation of K with the number of objects. `--match flops` adds, for every in-LLM method (FastV,
SparseVLM, PyramidDrop, DART), a row at the budget whose measured prefill FLOPs equal `--match-target`'s
(default uniform) at each K (`steprune.eval.flops_match`); it is compared at K. With `--weights` and no
`--methods`, StepPrune runs too. Prints a rich table; writes JSON and a Markdown table under reports/, and
with `--figure` the retention-vs-prefill-FLOPs figure (`steprune.eval.figures`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from steprune.data.world import WorldConfig, generate_records
from steprune.eval.base_label import base_facts
from steprune.eval.flops import measured_prefill_cost
from steprune.eval.flops_match import FlopsMatch, in_llm, match_budget
from steprune.eval.world_accuracy import world_accuracy
from steprune.eval.world_compare import add_intervals
from steprune.eval.world_tables import markdown, print_table
from steprune.pruned_vlm import PrunedVLM
from steprune.pruners import PRUNERS

__all__ = ["evaluate_world", "flops_matches", "k_by_objects", "main", "markdown", "print_table", "spearman"]

PRUNING_RATIOS = (0.667, 0.778, 0.889)  # the paper's Qwen2.5-VL columns; 48 / 32 / 16 of 144 tokens


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties; 0 when either side is constant), torchmetrics'.

    torchmetrics divides by std_x * std_y + 1e-6, so it is within 1e-5 of the exact value (scipy's) for the
    rank spreads of a world report; checked in tests/eval/test_spearman.py."""
    from torchmetrics.functional import spearman_corrcoef

    rho = spearman_corrcoef(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))
    return float(rho)


def k_by_objects(objects: Sequence[int], ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """Per number of objects in the scene: how many questions, and their mean / min / max K."""
    groups: dict[int, list[int]] = {}
    for count, k in zip(objects, ks, strict=True):
        groups.setdefault(int(count), []).append(int(k))
    return {
        str(count): {"n": len(v), "k_mean": sum(v) / len(v), "k_min": min(v), "k_max": max(v)}
        for count, v in sorted(groups.items())
    }


def flops_matches(
    base: PrunedVLM,
    records: Sequence[dict[str, Any]],
    methods: Sequence[str],
    budgets: Sequence[int],
    num_tokens: int,
    text_tokens: int,
    target: str = "uniform",
    probe_size: int = 8,
) -> list[FlopsMatch]:
    """Every in-LLM method of `methods` matched to `target`'s prefill FLOPs at each budget, on a probe batch."""
    from steprune.data.collate import InstructCollator

    batch = InstructCollator(base.processor, "eval")(list(records[:probe_size]))
    probe = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    cache: dict[tuple[str, int], float] = {}
    return [
        match_budget(base.model, base.processor, m, k, num_tokens, text_tokens, probe, target, cache)
        for k in budgets
        for m in methods
        if in_llm(m)
    ]


def evaluate_world(
    backbone: str,
    methods: Sequence[str],
    budgets: Sequence[int],
    split: str = "test",
    limit: int = 500,
    batch_size: int = 64,
    seed: int = 0,
    weights: str | None = None,
    world: dict[str, Any] | None = None,
    include_vanilla: bool = True,
    vanilla_accuracy: float | None = None,
    vanilla_correct: Sequence[int] | None = None,
    reference: str | None = None,
    match_flops: bool = False,
    match_target: str = "uniform",
) -> dict[str, Any]:
    """Run every method x budget (see the module docstring); `vanilla_correct` (N,) stands in for the unpruned
    row when `include_vanilla` is off (paired retention intervals), `vanilla_accuracy` for its accuracy."""
    from rich.progress import Progress

    from steprune.data.world_datamodule import world_config

    base = PrunedVLM.from_pretrained(backbone, method="identity", budget=None, dtype=torch.float32)
    cfg: WorldConfig = world_config(world or json.loads((Path(backbone) / "build_info.json").read_text()).get("world"))
    records = generate_records(split, limit, cfg, seed)
    n = cfg.grid_size**2
    text_tokens = 20  # a world prompt, template included
    matches = flops_matches(base, records, methods, budgets, n, text_tokens, match_target) if match_flops else []
    runs: list[tuple[str, int | None, FlopsMatch | None]] = [("identity", None, None)] * include_vanilla
    for b in budgets:
        matched = {m.method: m for m in matches if m.target_budget == b and m.reachable}
        same = {name for name, m in matched.items() if m.budget == b}  # matched at K itself: that row is both
        runs += [(m, b, matched[m] if m in same else None) for m in methods]
        runs += [(m.method, m.budget, m) for name, m in matched.items() if name not in same]
    rows = []
    with Progress(transient=True) as progress:
        task = progress.add_task("evaluating", total=len(runs) * len(records))
        for method, budget, match in runs:
            kwargs = {"weights": weights} if method == "steprune" else {}
            vlm = PrunedVLM(base.model, base.processor, method=method, budget=budget, **kwargs)
            progress.update(task, description=f"{method} @ {budget}")
            scores = world_accuracy(vlm, records, batch_size, progress=lambda n: progress.advance(task, n))
            objects, ks = zip(*scores.pop("objects_and_k"), strict=True)
            rows.append(
                {
                    "method": "vanilla" if method == "identity" else method,
                    "budget": budget,
                    **({"flops_match": match.as_dict()} if match else {}),
                    **scores,
                    "k_spearman_objects": spearman(objects, ks) if PRUNERS.get(method).adaptive else None,
                    "prefill_tflops": measured_prefill_cost(
                        base.model.config,
                        n,
                        scores["stages"],
                        min(n, round(scores["k_mean"])),
                        text_tokens,
                        scores["selection_flops"],
                    ).tflops(),
                    "k_histogram": torch.bincount(torch.tensor(ks), minlength=n + 1).tolist(),
                    "k_by_objects": k_by_objects(objects, ks),
                    **({"k_per_question": list(ks)} if PRUNERS.get(method).adaptive else {}),  # (N,) record order
                }
            )
    vanilla = rows[0]["overall"] if include_vanilla else vanilla_accuracy
    if vanilla is None and vanilla_correct is not None:
        vanilla = sum(vanilla_correct) / len(vanilla_correct)
    if vanilla is None:
        vanilla_correct = world_accuracy(base, records, batch_size)["correct"]
        vanilla = sum(vanilla_correct) / len(vanilla_correct)
    for row in rows:
        row["retention"] = row["overall"] / vanilla if vanilla > 0 else float("nan")
    report = {
        "backbone": backbone,
        "base": base_facts(backbone),
        "split": split,
        "limit": limit,
        "questions": len(records),
        "seed": seed,
        "visual_tokens": n,
        "text_tokens": text_tokens,
        **({"vanilla_correct": list(vanilla_correct)} if vanilla_correct is not None and not include_vanilla else {}),
        "flops_matches": [m.as_dict() for m in matches],
        "rows": rows,
    }
    return add_intervals(report, reference, seed=0)


def main(argv: Sequence[str] | None = None) -> int:
    """`steprune eval --suite world` (the one `steprune eval` parser, see `steprune.eval.eval_cli`)."""
    from steprune.eval.eval_cli import eval_main

    return eval_main(argv, suite="world")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The world suite for arguments parsed (and checked) by `steprune.eval.eval_cli`."""
    from steprune.base_location import BaseModelError, default_base_dir, require_base

    try:
        backbone = require_base(args.backbone or default_base_dir())
    except (FileNotFoundError, BaseModelError) as error:
        parser.error(f"--backbone: {error}")
    info = json.loads((backbone / "build_info.json").read_text())
    n = WorldConfig(**{k: v for k, v in info.get("world", {}).items()}).grid_size ** 2 if info.get("world") else 144
    budgets = args.budgets or [round(n * (1 - r)) for r in PRUNING_RATIOS]
    skipped = {"identity"} if args.weights else {"identity", "steprune"}
    methods = args.methods or [m for m in PRUNERS.names() if m not in skipped]
    for method in [*methods, args.match_target, *([args.reference] if args.reference else [])]:
        PRUNERS.get(method)  # did-you-mean before anything runs
    if args.match == "flops" and (in_llm(args.match_target) or PRUNERS.get(args.match_target).adaptive):
        parser.error(f"--match-target {args.match_target}: name a fixed-budget method that selects before the LLM")
    report = evaluate_world(
        str(backbone),
        methods,
        budgets,
        args.split,
        args.limit,
        args.batch_size,
        args.seed,
        args.weights,
        reference=args.reference,
        match_flops=args.match == "flops",
        match_target=args.match_target,
    )
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    if args.figure:
        from steprune.eval.figures import retention_vs_flops

        figure = Path(args.figure)
        figure.parent.mkdir(parents=True, exist_ok=True)
        name = f"built-in world, {report['questions']} {args.split} questions, {report['visual_tokens']} visual tokens"
        retention_vs_flops(report["rows"], name).savefig(figure, dpi=150)
        print(f"wrote {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
