"""Efficiency benchmark: FLOPs and prefill latency of every method, side by side, in one run.

Prefill latency = vision tower + selection + LLM prefill up to the first generated token, median of
`--repeats` runs after `--warmup` runs, for vanilla (all tokens), every registered method at each
budget, and uniform stride as the "ideal" zero-cost selector. StepPrune runs an untrained selector of the
default size capped at T_max = budget (it usually takes all `budget` pointer steps: what a trained selector with
mean K = budget costs; the row reports the tokens it really kept). FLOPs come from the analytic counter
(steprune.eval.flops) at the real sequence length, with the selection's own FLOPs. Prints a rich table
in the layout of the paper's Table 3 and writes JSON under reports/.

    python -m steprune.eval.bench                                  # scaled LLaVA config on CPU
    python -m steprune.eval.bench --config llava-7b --device cuda --dtype bfloat16
    make bench ARGS="--methods fastv,visionzip --repeats 10"
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from steprune.eval.flops import equivalent_visual_tokens, measured_prefill_cost
from steprune.pruned_vlm import PrunedVLM
from steprune.pruners import PRUNERS

PAPER_BUDGETS = (192, 128, 64)  # of 576 visual tokens
IMAGE_TOKEN_ID = 32000

CONFIGS: dict[str, dict] = {
    # the LLaVA-1.5-7B architecture: CLIP ViT-L/14-336 + Vicuna-7B (random weights)
    "llava-7b": dict(vision=(1024, 4096, 24, 16, 336, 14), text=(4096, 11008, 32, 32)),
    # the same shape of problem (576 visual tokens, 92 text tokens) scaled down for a CPU
    "scaled": dict(vision=(256, 1024, 6, 4, 192, 8), text=(512, 1376, 8, 8)),
    # seconds-long smoke configuration used by the tests
    "micro": dict(vision=(32, 64, 2, 4, 32, 8), text=(32, 64, 2, 4)),
}


def bench_config(name: str) -> LlavaConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown bench config {name!r}; choose from {sorted(CONFIGS)}")
    (vd, vm, vl, vh, image, patch), (td, tm, tl, th) = CONFIGS[name]["vision"], CONFIGS[name]["text"]
    vision = CLIPVisionConfig(
        hidden_size=vd,
        intermediate_size=vm,
        num_hidden_layers=vl,
        num_attention_heads=vh,
        image_size=image,
        patch_size=patch,
        projection_dim=vd,
    )
    text = LlamaConfig(
        hidden_size=td,
        intermediate_size=tm,
        num_hidden_layers=tl,
        num_attention_heads=th,
        vocab_size=IMAGE_TOKEN_ID + 64,
        max_position_embeddings=4096,
        pad_token_id=0,
    )
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID)


def build_model(config: LlavaConfig, device: str, dtype: torch.dtype) -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config)
    model.config._attn_implementation = "sdpa"
    return model.to(dtype).eval()


def bench_inputs(config: LlavaConfig, text_tokens: int, batch: int, device: str, dtype: torch.dtype) -> dict:
    """A prompt of `text_tokens` random text ids around one image's placeholders, batch copies."""
    n = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(1, IMAGE_TOKEN_ID, (text_tokens,), generator=generator)
    ids = torch.cat([text[:5], torch.full((n,), IMAGE_TOKEN_ID), text[5:]]).expand(batch, -1)
    size = config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "pixel_values": pixels.to(device, dtype),
    }


def round_robin_latency_ms(
    calls: Sequence[Callable[[], object]], device: str, warmup: int, repeats: int
) -> list[float]:
    """Median latency of each call, timed in interleaved rounds so drift and noise hit every call alike."""

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for call in calls:
        for _ in range(warmup):
            call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for i, call in enumerate(calls):
            sync()
            start = time.perf_counter()
            call()
            sync()
            times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


@dataclass
class BenchRow:
    method: str
    budget: int | None  # the requested budget (None: vanilla)
    tokens: float  # visual tokens reaching the last LLM layer (mean over the batch)
    equivalent_tokens: float  # layer-averaged visual tokens (in-LLM methods differ from `tokens`)
    llm_tflops: float
    total_tflops: float  # vision tower + projector + selection + LLM
    selection_gflops: float
    latency_ms: float
    speedup: float = 1.0
    ideal_fraction: float = 1.0  # ideal (uniform) latency / this latency, at the same budget


def run_bench(
    config_name: str = "scaled",
    methods: Sequence[str] | None = None,
    budgets: Sequence[int] | None = None,
    text_tokens: int = 92,
    batch: int = 1,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    warmup: int = 2,
    repeats: int = 5,
    progress: Callable[[str], None] = lambda _: None,
) -> dict:
    config = bench_config(config_name)
    model = build_model(config, device, dtype)
    inputs = bench_inputs(config, text_tokens, batch, device, dtype)
    n = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    if budgets is None:
        budgets = [max(1, round(b * n / 576)) for b in PAPER_BUDGETS]
    if methods is None:
        methods = [m for m in PRUNERS.names() if m != "identity"]
    for m in methods:
        PRUNERS.get(m)  # fail before timing anything
    num_layers = config.text_config.num_hidden_layers

    def measure(method: str, budget: int | None) -> tuple[BenchRow, Callable[[], object]]:
        progress(f"FLOPs of {method} @ {budget}")
        # StepPrune: an untrained selector (random weights, like the model) capped at T_max = budget; its small
        # STOP vector rarely wins untrained, so it runs ~`budget` pointer steps (the row reports the tokens it kept)
        extra = {"allow_random": True, "t_max": budget} if method == "steprune" else {}
        vlm = PrunedVLM(model, None, method=method, budget=budget, **extra)
        out = vlm(**inputs)
        stages = [(layer, int(k)) for layer, k in out.visual_tokens_per_stage]
        kept = float(out.result.lengths.float().mean()) if len(stages) == 1 else stages[-1][1]
        selection = out.selection_flops / batch
        cost = measured_prefill_cost(config, n, stages, round(kept), text_tokens, selection)
        equivalent = equivalent_visual_tokens(num_layers, [(0, n), *stages[1:]]) if len(stages) > 1 else kept
        row = BenchRow(method, budget, kept, equivalent, cost.tflops("llm"), cost.tflops(), selection / 1e9, 0.0)
        return row, lambda: vlm.generate(**inputs, max_new_tokens=1)

    vanilla, vanilla_call = measure("identity", None)
    vanilla.method = "vanilla"
    rows, calls = [vanilla], [vanilla_call]
    for budget in budgets:
        for method in ["uniform", *[m for m in methods if m != "uniform"]]:
            row, call = measure(method, budget)
            rows.append(row)
            calls.append(call)
    progress(f"latency: {len(calls)} configurations x {repeats} interleaved rounds")
    for row, latency in zip(rows, round_robin_latency_ms(calls, device, warmup, repeats), strict=True):
        row.latency_ms = latency
    for row in rows:
        row.speedup = vanilla.latency_ms / row.latency_ms
        ideal = next((r for r in rows if r.method == "uniform" and r.budget == row.budget), None)
        row.ideal_fraction = ideal.latency_ms / row.latency_ms if ideal is not None else 1.0
    hardware = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"{platform.processor() or 'cpu'}"
    return {
        "config": config_name,
        "visual_tokens": n,
        "text_tokens": text_tokens,
        "batch": batch,
        "device": device,
        "hardware": hardware,
        "cpu_threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "warmup": warmup,
        "repeats": repeats,
        "rows": [asdict(r) for r in rows],
    }


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"Prefill cost — {report['config']} config, {report['visual_tokens']} visual + {report['text_tokens']} text "
        f"tokens, batch {report['batch']}, {report['hardware']} ({report['device']}, {report['dtype']})"
    )
    table = Table(title=title)
    for column in (
        "method",
        "budget",
        "tokens",
        "equiv. tokens",
        "LLM TFLOPs",
        "total TFLOPs",
        "selection GFLOPs",
        "latency ms",
        "speed-up",
        "of ideal",
    ):
        table.add_column(column, justify="right" if column != "method" else "left")
    for r in report["rows"]:
        table.add_row(
            r["method"],
            "-" if r["budget"] is None else str(r["budget"]),
            f"{r['tokens']:.1f}",
            f"{r['equivalent_tokens']:.1f}",
            f"{r['llm_tflops']:.4g}",
            f"{r['total_tflops']:.4g}",
            f"{r['selection_gflops']:.3g}",
            f"{r['latency_ms']:.2f}",
            f"{r['speedup']:.2f}x",
            f"{r['ideal_fraction']:.0%}",
        )
    Console(width=max(Console().width, 150)).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="scaled", choices=sorted(CONFIGS))
    parser.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    parser.add_argument("--budgets", default=None, help="comma-separated (default: 192,128,64 scaled to N)")
    parser.add_argument("--text-tokens", type=int, default=92)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on cuda)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON path (default: reports/bench_<config>_<device>.json)")
    args = parser.parse_args(argv)
    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("benchmarking") as status:
        report = run_bench(
            args.config,
            args.methods.split(",") if args.methods else None,
            [int(b) for b in args.budgets.split(",")] if args.budgets else None,
            args.text_tokens,
            args.batch,
            args.device,
            dtype,
            args.warmup,
            args.repeats,
            progress=lambda msg: status.update(f"benchmarking {msg}"),
        )
    print_table(report)
    out = Path(args.out or f"reports/bench_{args.config}_{args.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
