"""`make train`: the main job on a fresh machine, end to end.

    python -m steprune.training.make_train                     # what `make train` runs
    python -m steprune.training.make_train --limit 200         # a smaller comparison

1. the base model of the built-in world (`make base`; reused when present);
2. StepPrune trained on it (`steprune train fit --config experiments/stepprune_world.yaml --ckpt_path last`:
   MLflow in sqlite:///mlruns.db, checkpoints/, resumes where it stopped; selector exported to
   artifacts/selector.safetensors);
3. StepPrune against every fixed-budget method at StepPrune's own mean K on the test split: a rich table,
   saved as reports/train_comparison.{json,md}. Each part's wall time is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from steprune.pruners import PRUNERS

EXPERIMENT = "experiments/stepprune_world.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=EXPERIMENT)
    parser.add_argument("--limit", type=int, default=500, help="test questions in the comparison")
    parser.add_argument("--out", default="reports/train_comparison")
    args, train_args = parser.parse_known_args(argv)  # the rest goes to `steprune train fit`

    from steprune.eval.world_eval import evaluate_world, markdown, print_table
    from steprune.training.build_base import build_base, default_base_dir
    from steprune.training.cli import train_main

    timings: dict[str, float] = {}
    start = time.perf_counter()
    base = default_base_dir()
    build_base(base)
    timings["base_s"] = time.perf_counter() - start

    start = time.perf_counter()
    weights = "artifacts/selector.safetensors"
    train_main(
        [
            "fit",
            "--config",
            args.config,
            "--model.backbone",
            str(base),
            "--export.path",
            weights,
            "--ckpt_path",
            "last",
            *train_args,
        ]
    )
    timings["train_s"] = time.perf_counter() - start

    start = time.perf_counter()
    learned = evaluate_world(str(base), ["steprune"], [1], limit=args.limit, weights=weights)
    k_mean = learned["rows"][1]["k_mean"]
    budget = max(1, round(k_mean))
    fixed = [m for m in PRUNERS.names() if m not in {"identity", "steprune"}]
    baselines = evaluate_world(
        str(base),
        fixed,
        [budget],
        limit=args.limit,
        include_vanilla=False,
        vanilla_accuracy=learned["rows"][0]["overall"],
    )
    report = {**learned, "rows": [*learned["rows"], *baselines["rows"]]}
    report["stepprune_mean_k"] = k_mean
    timings["compare_s"] = time.perf_counter() - start
    report["timings"] = timings
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    print(f"StepPrune mean K = {k_mean:.1f}; fixed-budget methods ran at K = {budget}")
    print({k: round(v, 1) for k, v in timings.items()}, f"-> {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
