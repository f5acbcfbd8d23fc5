"""The benchmark suite of the paper's Table 1: run every benchmark on a `PrunedVLM`, batched, and report
scores, retention against the unpruned model, per-benchmark JSON and a Markdown table.

    from steprune.eval.suite import run_suite, retention, write_results, markdown_table
    result = run_suite(vlm, suite="llava15", limit=200, batch_size=8)      # {"scores": {"gqa": 61.2, ...}, ...}
    retention(result["scores"], vanilla["scores"])                         # the Avg column, in %

    python -m steprune.eval.suite --backbone llava-hf/llava-1.5-7b-hf --method visionzip --budget 192,128,64 \\
        --limit 500 --out reports/suite                                    # (the CLI calls `suite_main`)

`suite_main` runs the unpruned model once (cached in OUT/vanilla/) for the retention column, each
method at each budget into OUT/<method>_<budget>/ (one JSON per benchmark + summary.json), and rewrites
OUT/table.md from every run found under OUT. Generation is greedy with the benchmark's small
`max_new_tokens`; prompts go through the processor's chat template with one image each.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from steprune.eval.benchmarks import Benchmark, Record, find_in_data_dir, get_benchmark

SUITES: dict[str, tuple[str, ...]] = {
    # the paper's Table 1 columns, in order
    "llava15": ("gqa", "mmbench_en", "mmbench_cn", "mme", "pope", "scienceqa_img", "vqav2", "textvqa"),
}
MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids", "image_sizes")


def suite_benchmarks(suite: str = "llava15", benchmarks: Sequence[str] | None = None) -> list[Benchmark]:
    if benchmarks is None:
        if suite not in SUITES:
            raise ValueError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
        benchmarks = SUITES[suite]
    return [get_benchmark(name) for name in benchmarks]


def chat_prompt(processor: Any, text: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def _batched(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def answer_batch(vlm: Any, records: Sequence[Record], max_new_tokens: int) -> list[str]:
    """Greedy answers of `vlm` to a batch of records (left-padded, one image per prompt)."""
    processor = vlm.processor
    tokenizer = getattr(processor, "tokenizer", processor)
    texts = [chat_prompt(processor, r.prompt) for r in records]
    previous = getattr(tokenizer, "padding_side", None)
    tokenizer.padding_side = "left"  # decoder-only generation continues from the last position
    try:
        inputs = processor(images=[r.image for r in records], text=texts, return_tensors="pt", padding=True)
    finally:
        if previous is not None:
            tokenizer.padding_side = previous
    parameter = next(vlm.model.parameters())
    batch = {}
    for key in MODEL_KEYS:
        value = inputs.get(key) if hasattr(inputs, "get") else None
        if isinstance(value, torch.Tensor):
            value = value.to(parameter.device)
            batch[key] = value.to(parameter.dtype) if value.is_floating_point() else value
    new_tokens = vlm.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def method_name(vlm: Any) -> str:
    name = getattr(vlm.pruner, "name", type(vlm.pruner).__name__)
    return "vanilla" if name == "identity" else name


def run_suite(
    vlm: Any,
    suite: str = "llava15",
    benchmarks: Sequence[str] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    data_dir: str | Path | None = None,
    progress: bool = True,
    keep_predictions: bool = True,
) -> dict:
    """Run each benchmark of `suite` (or the named `benchmarks`) on `vlm`; returns scores and details.

    `limit`: the first N dataset rows per benchmark (MMBench asks each in all its rotations; POPE keeps
    its three splits balanced). `data_dir`: read each benchmark from DIR/<name> or DIR/<dataset> instead of
    the Hub. Returns {"suite", "method", "budget", "limit", "scores": {name: score}, "results": {name: {...}}}.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    benches = suite_benchmarks(suite, benchmarks)
    sources = {b.name: find_in_data_dir(data_dir, b) if data_dir is not None else None for b in benches}
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    results: dict[str, dict] = {}
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        for bench in benches:
            data = bench.load(source=sources[bench.name], limit=limit)
            task = bar.add_task(f"{bench.title:<8} {method_name(vlm)}", total=data.total_rows)
            metric = bench.metric()
            predictions: list[dict] = []
            rows_done: set = set()
            for records in _batched(data, batch_size):
                answers = answer_batch(vlm, records, bench.max_new_tokens)
                metric.update(answers, records)
                if keep_predictions:
                    predictions += [
                        {"id": r.id, "prediction": a, "answers": list(r.answers)}
                        for r, a in zip(records, answers, strict=True)
                    ]
                before = len(rows_done)
                rows_done.update(r.metadata.get("index", r.id) for r in records)
                bar.advance(task, len(rows_done) - before)
            metrics = metric.compute()
            results[bench.name] = {
                "benchmark": bench.name,
                "title": bench.title,
                "source": data.where,
                "split": data.split,
                "protocol": bench.doc,
                "score": float(metrics["score"]),
                "metrics": metrics,
                "predictions": predictions,
            }
    return {
        "suite": suite if benchmarks is None else "custom",
        "method": method_name(vlm),
        "budget": vlm.budget,
        "visual_tokens": visual_tokens(vlm),
        "limit": limit,
        "scores": {name: r["score"] for name, r in results.items()},
        "results": results,
    }


def visual_tokens(vlm: Any) -> int | None:
    """N of a fixed-resolution (LLaVA) tower, e.g. 576; None for dynamic resolution."""
    vision = getattr(getattr(vlm.model, "config", None), "vision_config", None)
    size, patch = getattr(vision, "image_size", None), getattr(vision, "patch_size", None)
    if isinstance(size, int) and isinstance(patch, int) and getattr(vlm.adapter, "family", "") == "llava":
        return (size // patch) ** 2
    return None


# ----------------------------------------------------------------------------------------------------
def retention_per_benchmark(method_scores: dict[str, float], vanilla_scores: dict[str, float]) -> dict[str, float]:
    """method / vanilla per benchmark both have (benchmarks where vanilla scored 0 have no ratio)."""
    return {
        name: method_scores[name] / vanilla_scores[name]
        for name in method_scores
        if name in vanilla_scores and vanilla_scores[name] > 0
    }


def retention(method_scores: dict[str, float], vanilla_scores: dict[str, float]) -> float:
    """The paper's Avg column: the mean over benchmarks of method score / unpruned score, in % (NaN if none)."""
    ratios = retention_per_benchmark(method_scores, vanilla_scores)
    return 100.0 * sum(ratios.values()) / len(ratios) if ratios else math.nan


def write_results(result: dict, out_dir: str | Path) -> list[Path]:
    """OUT/<benchmark>.json per benchmark (scores, metrics, predictions) + OUT/summary.json (no predictions)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = {k: result[k] for k in ("suite", "method", "budget", "visual_tokens", "limit")}
    paths = []
    for name, bench in result["results"].items():
        path = out / f"{name}.json"
        path.write_text(json.dumps({**header, **bench}, indent=2, ensure_ascii=False, default=str))
        paths.append(path)
    summary = {**header, "scores": result["scores"]}
    summary["metrics"] = {name: r["metrics"] for name, r in result["results"].items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    return [*paths, out / "summary.json"]


def _cell(name: str, score: float | None) -> str:
    if score is None:
        return "–"
    return f"{score:.0f}" if name == "mme" else f"{score:.1f}"


def markdown_table(runs: Sequence[dict], vanilla: dict | None, benchmarks: Sequence[str] | None = None) -> str:
    """The paper's Table 1: one row per method, grouped by budget under a "Retain K tokens" line, the unpruned
    model first as the upper bound; columns = benchmarks, last = Avg retention (%) against the unpruned model.
    `runs` / `vanilla` are `run_suite` results or their summary.json contents."""
    names = list(benchmarks or (vanilla or runs[0])["scores"])
    titles = [get_benchmark(n).title for n in names]
    lines = ["| Method | " + " | ".join(titles) + " | Avg. |", "|---|" + "---:|" * (len(names) + 1)]
    blank = " |" * (len(names) + 1)

    def row(label: str, run: dict) -> str:
        scores = run["scores"]
        cells = [_cell(n, scores.get(n)) for n in names]
        subset = {n: scores[n] for n in names if n in scores}
        avg = retention(subset, vanilla["scores"]) if vanilla else math.nan
        return f"| {label} | " + " | ".join(cells) + f" | {'–' if math.isnan(avg) else f'{avg:.1f}%'} |"

    n_tokens = (vanilla or {}).get("visual_tokens") or next((r.get("visual_tokens") for r in runs), None)
    if vanilla is not None:
        lines.append(f"| *Upper bound, {n_tokens or 'all'} tokens (100%)* |" + blank)
        lines.append(row("Vanilla", vanilla))
    budgets = sorted({r["budget"] for r in runs if r["budget"] is not None}, reverse=True)
    for budget in budgets:
        share = f" (↓ {1 - budget / n_tokens:.1%})" if n_tokens else ""
        lines.append(f"| *Retain {budget} tokens{share}* |" + blank)
        for run in sorted((r for r in runs if r["budget"] == budget), key=lambda r: r["method"]):
            lines.append(row(run["method"], run))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _load_backbone(backbone: str, device: str, dtype: str):
    if backbone == "tiny-llava":  # random tiny LLaVA: a smoke test of the pipeline, no download
        from steprune.backbones.tiny import tiny_llava

        return tiny_llava()
    from steprune.pruned_vlm import PrunedVLM

    device_map = device if device.startswith("cuda") else None
    vlm = PrunedVLM.from_pretrained(backbone, method="identity", budget=None, dtype=dtype, device_map=device_map)
    return vlm.model, vlm.processor


def suite_main(argv: Sequence[str] | None = None) -> int:
    """`steprune eval --suite llava15` (the one `steprune eval` parser, see `steprune.eval.eval_cli`)."""
    from steprune.eval.eval_cli import eval_main

    return eval_main(argv, suite="llava15")


def run_cli(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the suite for each method x budget, write JSON per benchmark and OUT/table.md (arguments parsed and
    checked by `steprune.eval.eval_cli`)."""

    from rich.console import Console
    from rich.markdown import Markdown

    from steprune.pruned_vlm import PrunedVLM
    from steprune.pruners import PRUNERS

    methods = args.methods
    for m in methods:
        PRUNERS.get(m)  # fail on a typo before loading a model
    budgets = args.budgets or []
    if any(m != "identity" for m in methods) and not budgets:
        parser.error("--budget is required for a pruning method")
    benchmarks = [b.strip() for b in args.benchmarks.split(",")] if args.benchmarks else None
    names = [b.name for b in suite_benchmarks(args.suite, benchmarks)]
    out = Path(args.out)
    console = Console(stderr=True)

    model, processor = _load_backbone(args.backbone, args.device, args.dtype)
    if args.device != "cpu" and not args.device.startswith("cuda"):
        model = model.to(args.device)
    common = dict(
        suite=args.suite, benchmarks=benchmarks, limit=args.limit, batch_size=args.batch_size, data_dir=args.data_dir
    )

    def run(method: str, budget: int | None, where: Path) -> dict:
        vlm = PrunedVLM(model, processor, method=method, budget=budget)
        result = run_suite(vlm, progress=not args.no_progress, **common)
        write_results(result, where)
        console.print(f"wrote {where}/ ({', '.join(f'{k}={v:.4g}' for k, v in result['scores'].items())})")
        return result

    vanilla_dir = out / "vanilla"
    cached = _read_summary(vanilla_dir)
    if cached is None or cached.get("limit") != args.limit or not set(names) <= set(cached["scores"]):
        run("identity", None, vanilla_dir)
    for method in methods:
        if method == "identity":
            continue
        for budget in budgets:
            run(method, budget, out / f"{method}_{budget}")

    vanilla = _read_summary(vanilla_dir)
    runs = [s for d in sorted(out.iterdir()) if d.is_dir() and d.name != "vanilla" for s in [_read_summary(d)] if s]
    runs = [r for r in runs if r.get("limit") == args.limit]
    table = markdown_table(runs, vanilla, names)
    caption = f"{args.suite} suite, {args.backbone}" + (f", first {args.limit} questions" if args.limit else "")
    (out / "table.md").write_text(f"{caption}\n\n{table}")
    Console().print(Markdown(table))
    console.print(f"wrote {out / 'table.md'}")
    return 0


def _read_summary(directory: Path) -> dict | None:
    path = directory / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


if __name__ == "__main__":
    raise SystemExit(suite_main())
