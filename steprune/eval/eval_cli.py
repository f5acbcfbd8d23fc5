"""`steprune eval`: one argparse parser for every benchmark suite, checked before anything loads.

    steprune eval --suite world --methods uniform,mmtok --budgets 16          # the built-in world (world_eval)
    steprune eval --suite=llava15 --backbone llava-hf/llava-1.5-7b-hf --method visionzip --budget 192,128,64
    steprune eval --help                                                      # both suites and their options

`--suite` picks the suite (choices: llava15, world; default llava15). Options common to both come first;
each suite's own options sit in their own group, and one given to the other suite is a usage error. Before any
model or dataset loads: budgets, limits and batch sizes are whole numbers >= 1, method names exist, the backbone
exists when it is a local path, and `--out` (and `--figure`) can be written. The runs themselves are
`steprune.eval.suite.run_cli` (llava15) and `steprune.eval.world_eval.run` (world).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from steprune.cli_args import int_list, positive_int, unwritable

SUITE_NAMES = ("llava15", "world")
# the options only one suite reads (argparse dest names); their defaults are None / False
SUITE_ONLY: dict[str, tuple[str, ...]] = {
    "llava15": ("benchmarks", "data_dir", "device", "dtype", "no_progress"),
    "world": ("split", "seed", "weights", "reference", "match", "match_target", "figure"),
}
DEFAULTS: dict[str, dict[str, object]] = {
    "llava15": {"methods": ["identity"], "batch_size": 8, "dtype": "auto", "no_progress": False},
    "world": {"limit": 500, "batch_size": 64, "split": "test", "seed": 0, "match": "tokens", "match_target": "uniform"},
}


def name_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated method names, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steprune eval",
        description="Accuracy and retention of pruning methods on a benchmark suite: llava15 (the paper's Table 1: "
        "GQA, MMBench(-CN), MME, POPE, SQA-IMG, VQAv2, TextVQA) or world (the built-in world's test split).",
        allow_abbrev=False,
    )
    parser.add_argument("--suite", choices=SUITE_NAMES, default="llava15", help="the benchmark suite (default llava15)")
    parser.add_argument(
        "--backbone",
        default=None,
        help="llava15: HF id or local dir of the MLLM, required ('tiny-llava': smoke test); "
        "world: base model directory (default artifacts/base)",
    )
    parser.add_argument(
        "--methods", "--method", type=name_list, default=None, help="method(s), comma-separated (world: all)"
    )
    parser.add_argument(
        "--budgets",
        "--budget",
        type=int_list,
        default=None,
        help="visual-token budget(s), comma-separated, e.g. 192,128,64 (world default: 66.7/77.8/88.9%% pruning)",
    )
    parser.add_argument("--limit", type=positive_int, default=None, help="first N questions (world default 500)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="default: llava15 8, world 64")
    parser.add_argument(
        "--out",
        default=None,
        help="llava15: output dir (reports/suite/<suite>/<backbone>); world: file prefix "
        "(reports/world_eval -> .json, .md)",
    )
    table1 = parser.add_argument_group("--suite llava15 only")
    table1.add_argument("--benchmarks", default=None, help="comma-separated subset of the suite")
    table1.add_argument("--data-dir", default=None, help="local copies in DIR/<benchmark> or DIR/<dataset>")
    table1.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    table1.add_argument("--dtype", default=None, help="auto | bfloat16 | float16 | float32 (default auto)")
    table1.add_argument("--no-progress", action="store_true", default=None)
    world = parser.add_argument_group("--suite world only")
    world.add_argument("--split", default=None, choices=["val", "test"], help="default test")
    world.add_argument("--seed", type=int, default=None, help="the world's seed (default 0)")
    world.add_argument("--weights", default=None, help="StepPrune selector .safetensors (for --methods steprune)")
    world.add_argument("--reference", default=None, help="method every row is compared with (default: best baseline)")
    world.add_argument(
        "--match",
        choices=["tokens", "flops"],
        default=None,
        help="flops: also run every in-LLM method at the budget matching --match-target's prefill FLOPs at each K",
    )
    world.add_argument("--match-target", default=None, help="the pre-LLM method whose FLOPs at K are matched")
    world.add_argument("--figure", default=None, help="write the retention-vs-prefill-FLOPs figure here (.png)")
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Usage errors for everything that can be known before a model loads; fills each suite's defaults."""
    from steprune.pruners import PRUNERS

    other = next(name for name in SUITE_NAMES if name != args.suite)
    foreign = [name for name in SUITE_ONLY[other] if getattr(args, name) not in (None, False)]
    if foreign:
        options = ", ".join("--" + name.replace("_", "-") for name in foreign)
        parser.error(f"{options}: only for --suite {other} (this is --suite {args.suite})")
    for name, value in DEFAULTS[args.suite].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for method in args.methods or []:
        if method not in PRUNERS:
            PRUNERS.get(method)  # the did-you-mean ValueError
    if args.suite == "llava15":
        if args.backbone is None:
            parser.error("--backbone is required for --suite llava15 (a HF id or a local model directory)")
        if args.backbone != "tiny-llava":
            from steprune.base_location import resolve_pretrained

            try:
                resolve_pretrained(args.backbone)
            except (FileNotFoundError, NotADirectoryError, ValueError) as error:
                parser.error(f"--backbone: {error}")
        from steprune.eval.suite import _slug

        args.out = args.out or str(Path("reports/suite") / args.suite / _slug(args.backbone))
        args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        outputs = [("--out", Path(args.out), True)]
    else:
        args.out = args.out or "reports/world_eval"
        outputs = [("--out", Path(args.out).with_suffix(".json"), False)]
        outputs += [("--figure", Path(args.figure), False)] if args.figure else []
    for option, path, directory in outputs:
        problem = unwritable(path, directory)
        if problem:
            parser.error(f"{option} {path}: {problem}; choose a writable location")


def eval_main(argv: Sequence[str] | None = None, suite: str | None = None) -> int:
    """`steprune eval ...`; `suite` sets the default suite (`python -m steprune.eval.suite` / `.world_eval`)."""
    parser = build_parser()
    if suite is not None:
        parser.set_defaults(suite=suite)
    args = parser.parse_args(argv)
    check_args(args, parser)
    if args.suite == "world":
        from steprune.eval.world_eval import run

        return run(args, parser)
    from steprune.eval.suite import run_cli

    return run_cli(args, parser)


if __name__ == "__main__":
    raise SystemExit(eval_main())
