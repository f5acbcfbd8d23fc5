"""`make train`: the main job on a fresh machine, end to end.

    python -m steprune.recipes.make_train                     # what `make train` runs
    python -m steprune.recipes.make_train --limit 200         # a smaller comparison
    python -m steprune.recipes.make_train --config experiments/stepprune_world.yaml \
        --config experiments/stepprune_removal.yaml --config experiments/stepprune_coverage_prior.yaml \
        --config experiments/stepprune_prior_absolute_d32.yaml --config experiments/make_train.yaml \
        --config experiments/budget_k48.yaml --out reports/train_comparison_k48   # 66.7 % pruning instead
    python -m steprune.recipes.make_train --config experiments/stepprune_world.yaml   # the paper's surrogate

1. the base model of the built-in world (`make base`; reused when present);
2. StepPrune trained on it (`steprune train fit` with the configs of DEFAULT_CONFIGS — the removal surrogate,
   kd 1, the coverage prior with its absolute-gain STOP, a 32-wide selector at lr 1e-4, aimed at a mean of 16
   of the 144 tokens: experiments/stepprune_prior_absolute_d32.yaml, experiments/make_train.yaml — and
   `--ckpt_path last`: MLflow in sqlite:///mlruns.db, checkpoints/base-<fingerprint>/ — one directory per base
   model, so a rebuilt base starts a fresh run and the old checkpoints stay — resumes where it stopped; selector
   exported to artifacts/selector.safetensors);
3. StepPrune against every fixed-budget method at StepPrune's own mean K on the test split: a rich table,
   saved as reports/train_comparison.{json,md}, with StepPrune's adaptivity (K range, max/min, Spearman rho
   against the number of objects, K per object count, accuracy per K bucket) and its figures
   reports/train_comparison_k.png and reports/train_comparison_k_buckets.png.
   Each part's wall time is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steprune.pruners import PRUNERS

# The better of the two surrogates on the shipped base, measured (experiments/make_train.yaml says what and how);
# `--config experiments/stepprune_world.yaml` alone trains the paper's surrogate instead.
DEFAULT_CONFIGS = (
    "experiments/stepprune_world.yaml",
    "experiments/stepprune_removal.yaml",
    "experiments/stepprune_coverage_prior.yaml",
    "experiments/stepprune_prior_absolute_d32.yaml",
    "experiments/make_train.yaml",
)
REPOSITORY = Path(__file__).resolve().parents[2]  # the checkout the experiments/ directory belongs to


def default_configs() -> list[str]:
    """DEFAULT_CONFIGS as paths in this checkout, so that `make train` finds them from any working directory."""
    return [str(REPOSITORY / config) for config in DEFAULT_CONFIGS]


def adaptivity_summary(row: dict[str, Any]) -> dict[str, Any]:
    """How adaptive StepPrune's K is: its range, max/min ratio and Spearman correlation with the object count."""
    k_min, k_max = row["k_min"], row["k_max"]
    means = [v["k_mean"] for v in row["k_by_objects"].values()]
    return {
        "k_mean": row["k_mean"],
        "k_min": k_min,
        "k_max": k_max,
        "k_max_over_min": k_max / k_min if k_min > 0 else float("inf"),
        # per-image max/min is infinite as soon as one image keeps 0 tokens; this ratio stays informative
        "k_by_objects_max_over_min": max(means) / min(means) if means and min(means) > 0 else float("inf"),
        "spearman_k_objects": row["k_spearman_objects"],
        "k_by_objects": row["k_by_objects"],
    }


def adaptivity_markdown(summary: dict[str, Any]) -> str:
    by = summary["k_by_objects"]
    lines = [
        "",
        f"StepPrune adaptivity: K {summary['k_min']}-{summary['k_max']} (max/min {summary['k_max_over_min']:.2f}), "
        f"Spearman rho(K, objects) = {summary['spearman_k_objects']:.3f}; mean K per object count spans "
        f"{summary['k_by_objects_max_over_min']:.1f}x",
        "",
        "| objects | questions | K mean | K min | K max |",
        "|---|---|---|---|---|",
        *(f"| {c} | {v['n']} | {v['k_mean']:.1f} | {v['k_min']} | {v['k_max']} |" for c, v in by.items()),
        "",
    ]
    return "\n".join(lines)


def selector_summary(weights: str) -> dict[str, Any]:
    """Which StepPrune was compared: surrogate, floor, STOP offset and its calibration (from the exported file)."""
    from steprune.selector.selector import StepPruneSelector

    selector = StepPruneSelector.load(weights)
    config = selector.config
    return {
        "surrogate": config.get("surrogate", "paper"),
        "prior": config.get("prior", "none"),
        "prior_stop": config.get("prior_stop", "saturation"),
        "min_k": config.get("min_k"),
        "t_max": config.get("t_max"),
        "stop_offset": config.get("stop_offset", 0.0),
        "calibration": selector.calibration,
    }


def selector_markdown(summary: dict[str, Any]) -> str:
    calibration = summary["calibration"]
    target = (
        f"target mean K {calibration['target_k']:g}, calibrated to {calibration['mean_k']:.2f} on "
        f"{calibration['samples']} {calibration['split']} questions (STOP offset {calibration['stop_offset']:+.3f})"
        if calibration
        else "no target (fixed λ, uncalibrated)"
    )
    prior = summary.get("prior", "none")
    prior_text = f", prior `{prior}` (STOP `{summary.get('prior_stop', 'saturation')}`)" if prior != "none" else ""
    return (
        f"StepPrune: surrogate `{summary['surrogate']}`{prior_text}, {target}, floor min_k {summary['min_k']}, "
        f"T_max {summary['t_max']}.\n\n"
    )


def checkpoint_dir(base: Path, root: Path = Path("checkpoints")) -> Path:
    """Where `make train` keeps the checkpoints of the selector trained on `base`: one directory per base."""
    from steprune.backbones.fingerprint import backbone_fingerprint

    return root / f"base-{backbone_fingerprint(str(base)).removeprefix('sha256:')[:12]}"


def check_configs(parser: argparse.ArgumentParser, configs: Sequence[str], train_args: Sequence[str]) -> None:
    """Usage error unless every config exists and the training command line parses (nothing is built)."""
    from steprune.sweeps.train import check_train_argv

    for config in configs:
        if not Path(config).is_file():
            parser.error(f"--config {config}: no such file (the experiment YAMLs are under experiments/)")
    resume = {i for i, arg in enumerate(train_args) if arg == "--ckpt_path"}  # a fit-only option
    rest = [a for i, a in enumerate(train_args) if i not in resume | {i + 1 for i in resume}]
    rest = [a for a in rest if not a.startswith("--ckpt_path=")]
    try:
        check_train_argv([*(arg for config in configs for arg in ("--config", config)), *rest])
    except ValueError as error:
        parser.error(str(error))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        action="append",
        help=f"experiment YAML, repeatable: later files are deltas; replaces the default {' '.join(DEFAULT_CONFIGS)}",
    )
    parser.add_argument("--limit", type=int, default=500, help="test questions in the comparison")
    parser.add_argument("--out", default="reports/train_comparison")
    args, train_args = parser.parse_known_args(argv)  # the rest goes to `steprune train fit`

    from steprune.base_location import default_base_dir
    from steprune.eval.k_buckets import k_bucket_accuracy, k_bucket_markdown
    from steprune.eval.report_figures import adaptivity, k_buckets
    from steprune.eval.world_compare import add_intervals
    from steprune.eval.world_eval import evaluate_world, markdown, print_table
    from steprune.recipes.build_base import build_base
    from steprune.training.cli import checkpoint_callbacks, train_main

    configs = args.config or default_configs()
    check_configs(parser, configs, train_args)  # before the base: building it can take an hour
    timings: dict[str, float] = {}
    start = time.perf_counter()
    base = default_base_dir()
    build_base(base)
    timings["base_s"] = time.perf_counter() - start

    start = time.perf_counter()
    weights = "artifacts/selector.safetensors"
    checkpoints = checkpoint_dir(base)
    print(f"checkpoints: {checkpoints} (resumed when present)")
    train_main(
        [
            "fit",
            *(arg for config in configs for arg in ("--config", config)),
            "--model.backbone",
            str(base),
            "--export.path",
            weights,
            "--ckpt_path",
            "last",
            f"--trainer.callbacks={json.dumps(checkpoint_callbacks(checkpoints))}",
            *train_args,
        ]
    )
    timings["train_s"] = time.perf_counter() - start

    start = time.perf_counter()
    learned = evaluate_world(str(base), ["steprune"], [1], limit=args.limit, weights=weights)
    k_mean = learned["rows"][1]["k_mean"]
    learned["rows"][1]["budget"] = "adaptive"  # StepPrune ignores the budget: its policy decides K
    budget = max(1, round(k_mean))
    fixed = [m for m in PRUNERS.names() if m not in {"identity", "steprune"}]
    baselines = evaluate_world(
        str(base),
        fixed,
        [budget],
        limit=args.limit,
        include_vanilla=False,
        vanilla_accuracy=learned["rows"][0]["overall"],
        vanilla_correct=learned["rows"][0]["correct"],
    )
    report = {**learned, "rows": [*learned["rows"], *baselines["rows"]]}
    add_intervals(report)  # 95 % intervals per row, StepPrune's paired difference to the best baseline at its K
    report["stepprune_mean_k"] = k_mean
    report["stepprune"] = selector_summary(weights)
    report["adaptivity"] = adaptivity_summary(learned["rows"][1])
    report["k_buckets"] = k_bucket_accuracy(
        learned["rows"][1]["k_per_question"], learned["rows"][1]["correct"], learned["rows"][0]["correct"]
    )
    timings["compare_s"] = time.perf_counter() - start
    report["timings"] = timings
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(
        selector_markdown(report["stepprune"])
        + markdown(report)
        + adaptivity_markdown(report["adaptivity"])
        + "\nStepPrune's accuracy per K bucket (six log-spaced buckets; the paper's Fig. 4):\n\n"
        + k_bucket_markdown(report["k_buckets"])
    )
    figure = out.with_name(out.name + "_k.png")
    row = learned["rows"][1]
    adaptivity(row["k_histogram"], row["k_by_objects"], "StepPrune on the built-in world (test split)").savefig(figure)
    bucket_figure = out.with_name(out.name + "_k_buckets.png")
    k_buckets(report["k_buckets"], "StepPrune: accuracy per K bucket (test split)").savefig(bucket_figure)
    print(selector_markdown(report["stepprune"]).strip())
    print(f"StepPrune mean K = {k_mean:.1f}; fixed-budget methods ran at K = {budget}")
    print(adaptivity_markdown(report["adaptivity"]).strip())
    print(k_bucket_markdown(report["k_buckets"]).strip())
    print(f"figures: {figure}, {bucket_figure}")
    print({k: round(v, 1) for k, v in timings.items()}, f"-> {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
