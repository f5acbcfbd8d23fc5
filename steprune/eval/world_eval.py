"""`steprune eval --suite world`: every method at the paper's pruning ratios on the built-in world.

    steprune eval --suite world                                   # artifacts/base, test split, all methods
    steprune eval --suite world --methods uniform,mmtok --budgets 16 --limit 200
    steprune eval --suite world --methods steprune --weights artifacts/selector.safetensors

For each method x budget: exact-match accuracy overall and per question kind, K (mean/min/max; for
in-LLM methods the tokens left after the last drop), retention = accuracy / unpruned accuracy, and the
analytic prefill TFLOPs at the measured mean K (in-LLM methods: through their drop stages). Adaptive methods
also get the Spearman correlation of K with the number of objects. Prints a rich table; writes JSON and a
Markdown table under reports/.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from steprune.data.world import WorldConfig, generate_records
from steprune.eval.flops import measured_prefill_cost
from steprune.eval.world_accuracy import world_accuracy
from steprune.pruned_vlm import PrunedVLM
from steprune.pruners import PRUNERS

PRUNING_RATIOS = (0.667, 0.778, 0.889)  # the paper's Qwen2.5-VL columns; 48 / 32 / 16 of 144 tokens


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(values: Sequence[float]) -> torch.Tensor:
        v = torch.tensor(values, dtype=torch.float64)
        order = v.argsort()
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in v.unique():  # average ranks over ties
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = (rx.square().sum() * ry.square().sum()).sqrt()
    return float((rx * ry).sum() / denominator) if denominator > 0 else 0.0


def k_by_objects(objects: Sequence[int], ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """Per number of objects in the scene: how many questions, and their mean / min / max K."""
    groups: dict[int, list[int]] = {}
    for count, k in zip(objects, ks, strict=True):
        groups.setdefault(int(count), []).append(int(k))
    return {
        str(count): {"n": len(v), "k_mean": sum(v) / len(v), "k_min": min(v), "k_max": max(v)}
        for count, v in sorted(groups.items())
    }


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
) -> dict[str, Any]:
    from rich.progress import Progress

    from steprune.data.world_datamodule import world_config

    base = PrunedVLM.from_pretrained(backbone, method="identity", budget=None, dtype=torch.float32)
    cfg: WorldConfig = world_config(world or json.loads((Path(backbone) / "build_info.json").read_text()).get("world"))
    records = generate_records(split, limit, cfg, seed)
    text_tokens = 20  # a world prompt, template included
    runs = [("identity", None)] * include_vanilla + [(m, b) for b in budgets for m in methods]
    rows = []
    with Progress(transient=True) as progress:
        task = progress.add_task("evaluating", total=len(runs) * len(records))
        for method, budget in runs:
            kwargs = {"weights": weights} if method == "steprune" else {}
            vlm = PrunedVLM(base.model, base.processor, method=method, budget=budget, **kwargs)
            progress.update(task, description=f"{method} @ {budget}")
            scores = world_accuracy(vlm, records, batch_size, progress=lambda n: progress.advance(task, n))
            objects, ks = zip(*scores.pop("objects_and_k"), strict=True)
            n = cfg.grid_size**2
            rows.append(
                {
                    "method": "vanilla" if method == "identity" else method,
                    "budget": budget,
                    **scores,
                    "k_spearman_objects": spearman(objects, ks) if PRUNERS.get(method).adaptive else None,
                    "prefill_tflops": measured_prefill_cost(
                        base.model.config, n, scores["stages"], min(n, round(scores["k_mean"])), text_tokens
                    ).tflops(),
                    "k_histogram": torch.bincount(torch.tensor(ks), minlength=n + 1).tolist(),
                    "k_by_objects": k_by_objects(objects, ks),
                }
            )
    vanilla = rows[0]["overall"] if include_vanilla else vanilla_accuracy
    if vanilla is None:
        vanilla = world_accuracy(base, records, batch_size)["overall"]
    for row in rows:
        row["retention"] = row["overall"] / vanilla if vanilla > 0 else float("nan")
    return {
        "backbone": backbone,
        "split": split,
        "limit": limit,
        "seed": seed,
        "visual_tokens": cfg.grid_size**2,
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    kinds = sorted(report["rows"][0]["per_kind"])
    head = "| method | budget | K mean (min-max) | " + " | ".join(kinds) + " | overall | retention | TFLOPs |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["rows"]:
        cells = [
            r["method"],
            "-" if r["budget"] is None else str(r["budget"]),
            f"{r['k_mean']:.1f} ({r['k_min']}-{r['k_max']})",
        ]
        cells += [f"{100 * r['per_kind'].get(k, 0):.1f}" for k in kinds]
        cells += [f"{100 * r['overall']:.1f}", f"{100 * r['retention']:.1f}%", f"{r['prefill_tflops']:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    kinds = sorted(report["rows"][0]["per_kind"])
    table = Table(
        title=f"built-in world, {report['split']} split ({report['limit']} questions), "
        f"{report['visual_tokens']} visual tokens"
    )
    for column in ("method", "budget", "K mean (min-max)", *kinds, "overall", "retention", "TFLOPs"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in report["rows"]:
        table.add_row(
            r["method"],
            "-" if r["budget"] is None else str(r["budget"]),
            f"{r['k_mean']:.1f} ({r['k_min']}-{r['k_max']})",
            *[f"{100 * r['per_kind'].get(k, 0):.1f}" for k in kinds],
            f"{100 * r['overall']:.1f}",
            f"{100 * r['retention']:.1f}%",
            f"{r['prefill_tflops']:.3g}",
        )
    Console(width=max(Console().width, 160)).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    from steprune.training.build_base import default_base_dir, require_base

    parser = argparse.ArgumentParser(prog="steprune eval --suite world", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["world"], default="world")
    parser.add_argument("--backbone", default=None, help="base model directory (default: artifacts/base)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every training-free method)")
    parser.add_argument("--budgets", default=None, help="comma-separated (default: 66.7/77.8/88.9%% pruning)")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=None, help="StepPrune selector .safetensors (for --methods steprune)")
    parser.add_argument("--out", default="reports/world_eval")
    args = parser.parse_args(argv)
    backbone = require_base(args.backbone or default_base_dir())
    info = json.loads((backbone / "build_info.json").read_text())
    n = WorldConfig(**{k: v for k, v in info.get("world", {}).items()}).grid_size ** 2 if info.get("world") else 144
    budgets = (
        [int(b) for b in args.budgets.split(",")] if args.budgets else [round(n * (1 - r)) for r in PRUNING_RATIOS]
    )
    methods = (
        args.methods.split(",") if args.methods else [m for m in PRUNERS.names() if m not in {"identity", "steprune"}]
    )
    for method in methods:
        PRUNERS.get(method)
    report = evaluate_world(
        str(backbone), methods, budgets, args.split, args.limit, args.batch_size, args.seed, args.weights
    )
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
