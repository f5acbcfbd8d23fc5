"""The `steprune` console script: one entry point, one subcommand per job.

steprune --help
steprune methods                 # every registered pruning method, with its one-line summary
steprune runs --experiment X     # an MLflow experiment's runs compared (mean ± std by variant)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _methods(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from steprune.pruners import PRUNERS

    table = Table(title="steprune pruning methods")
    for column in ("name", "where", "reads prompt", "adaptive K", "summary"):
        table.add_column(column)
    for name in PRUNERS.names():
        cls = PRUNERS.get(name)
        in_llm = cls.layer_drops is not PRUNERS.get("identity").layer_drops
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        table.add_row(name, "in LLM" if in_llm else "before LLM", str(cls.reads_text), str(cls.adaptive), summary)
    Console().print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steprune",
        description="Visual-token pruning for multimodal LLMs: StepPrune and the training-free baselines.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    methods = sub.add_parser("methods", help="list the registered pruning methods")
    methods.set_defaults(func=_methods)
    sub.add_parser("train", help="train StepPrune (LightningCLI: `steprune train fit --help`)", add_help=False)
    sub.add_parser(
        "base", help="build (or reuse) the built-in world's base MLLM (`steprune base --help`)", add_help=False
    )
    sub.add_parser(
        "eval", help="accuracy + retention on a suite: --suite llava15|world (`steprune eval --help`)", add_help=False
    )
    sub.add_parser("bench", help="FLOPs + prefill latency of every method (`steprune bench --help`)", add_help=False)
    sub.add_parser("sweep", help="Optuna sweep tracked in MLflow, resumable (`steprune sweep --help`)", add_help=False)
    sub.add_parser("ablate", help="the Table 4 ablation grid over seeds (`steprune ablate --help`)", add_help=False)
    sub.add_parser(
        "runs",
        help="an MLflow experiment's runs compared, mean ± std by variant (`steprune runs --help`)",
        add_help=False,
    )
    return parser


# subcommands that own their whole argument list (their parsers print their own --help)
DELEGATED = {
    "train": "steprune.training.cli:train_main",
    "bench": "steprune.eval.bench:main",
    "eval": "steprune.eval.eval_cli:eval_main",
    "base": "steprune.recipes.build_base:main",
    "sweep": "steprune.sweeps.runner:sweep_main",
    "ablate": "steprune.sweeps.ablation:ablate_main",
    "runs": "steprune.sweeps.compare:compare_main",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module_name, func = DELEGATED[argv[0]].split(":")
        import importlib

        return int(getattr(importlib.import_module(module_name), func)(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
