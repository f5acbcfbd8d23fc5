"""Efficiency benchmark: FLOPs and prefill latency of every method, side by side, in one run.

Prefill latency = vision tower + selection + LLM prefill up to the first generated token, median of
`--repeats` runs after `--warmup` runs, for vanilla (all tokens), every registered method at each
budget, and uniform stride as the "ideal" zero-cost selector. StepPrune runs an untrained selector of the
default size capped at T_max = budget (it usually takes all `budget` pointer steps: what a trained selector with
mean K = budget costs; the row reports the tokens it really kept). FLOPs come from the analytic counter
(steprune.eval.flops) at the real sequence length, with the selection's own FLOPs. Prints a rich table
in the layout of the paper's Table 3 and writes JSON under reports/.

`--flops-only` measures no time at all and needs no GPU, even for `--config llava-7b`: each method runs once
on a *proxy* model to report what it did (visual tokens per LLM stage, tokens kept, the FLOPs its selection
spent), and the table's FLOPs are then computed analytically (`measured_prefill_cost`) on the REAL config.
The proxy is the config itself with the LLM's MLP cut to `intermediate_size=1` (`proxy_config`): the vision
tower, the projector, the LLM's hidden size, heads, layers and vocabulary — every width a selection reads or
is costed at — stay the real ones (LLaVA-1.5-7B: 2.7 B parameters, 10.2 GiB in fp32, instead of 7 B / 28 GB).
The MLP cannot change a row: the pre-LLM methods and StepPrune choose before the LLM runs (they stop after
`PrunedVLM.prepare`), the in-LLM methods' schedules depend only on N, the depth and the budget, and the FLOPs
their drops spend are counted from tensor shapes; weights are random anyway. Writes
reports/flops_<config>.json and a Markdown table beside it.

    python -m steprune.eval.bench                                  # scaled LLaVA config on CPU
    python -m steprune.eval.bench --config llava-7b --device cuda --dtype bfloat16
    python -m steprune.eval.bench --config llava-7b --flops-only   # the LLaVA-1.5-7B FLOPs table on a CPU
    make bench ARGS="--methods fastv,visionzip --repeats 10"
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from steprune.cli_args import int_list, positive_int
from steprune.eval.bench_report import markdown_report, print_table
from steprune.eval.flops import equivalent_visual_tokens, measured_prefill_cost, prefill_cost
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


def proxy_config(config: LlavaConfig, intermediate_size: int = 1) -> LlavaConfig:
    """`config` with the LLM's MLP cut to `intermediate_size`; every other width (vision, hidden, heads, layers,
    vocabulary) is kept, so each method selects and is costed exactly as on `config` (see the module docstring)."""
    proxy = copy.deepcopy(config)
    proxy.text_config.intermediate_size = intermediate_size
    return proxy


@dataclass
class BenchRow:
    method: str
    budget: int | None  # the requested budget (None: vanilla)
    tokens: float  # visual tokens reaching the last LLM layer (mean over the batch)
    equivalent_tokens: float  # layer-averaged visual tokens (in-LLM methods differ from `tokens`)
    llm_tflops: float  # the LLM alone (the papers' convention: vanilla LLaVA-1.5-7B = 8.89)
    llm_selection_tflops: float  # LLM + selection: without the vision tower (and the projector)
    total_tflops: float  # vision tower + projector + selection + LLM
    selection_gflops: float
    stages: list[tuple[int, int]]  # (first layer, visual tokens alive) as the pruned forward reported them
    latency_ms: float | None = None  # None: not timed (--flops-only)
    speedup: float | None = None
    ideal_fraction: float | None = None  # ideal (uniform) latency / this latency, at the same budget


def bench_vlm(model: LlavaForConditionalGeneration, method: str, budget: int | None) -> PrunedVLM:
    """`method` at `budget` on `model`; StepPrune is an untrained selector (random weights, like the model) capped
    at T_max = budget: its small STOP vector rarely wins untrained, so it runs ~`budget` pointer steps."""
    extra = {"allow_random": True, "t_max": budget} if method == "steprune" else {}
    return PrunedVLM(model, None, method=method, budget=budget, **extra)


def flops_row(
    vlm: PrunedVLM, inputs: dict, method: str, budget: int | None, config: LlavaConfig, text_tokens: int
) -> BenchRow:
    """What `vlm` reports about its selection on `inputs`, costed analytically on `config` (per sample)."""
    report = vlm.selection_report(**inputs)
    n = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    stages = [(int(layer), int(k)) for layer, k in report.visual_tokens_per_stage]
    kept = float(report.result.lengths.float().mean()) if len(stages) == 1 else stages[-1][1]
    selection = report.selection_flops / report.result.keep.shape[0]
    cost = measured_prefill_cost(config, n, stages, round(kept), text_tokens, selection)
    num_layers = config.text_config.num_hidden_layers
    equivalent = equivalent_visual_tokens(num_layers, [(0, n), *stages[1:]]) if len(stages) > 1 else kept
    return BenchRow(
        method,
        budget,
        kept,
        equivalent,
        cost.tflops("llm"),
        (cost.llm + cost.selection) / 1e12,
        cost.tflops(),
        selection / 1e9,
        stages,
    )


def add_latency(rows: list[BenchRow], calls: Sequence[Callable[[], object]], device: str, warmup: int, repeats: int):
    """Time every row's call (rows[0] is vanilla) and fill latency, speed-up and fraction of the ideal."""
    for row, latency in zip(rows, round_robin_latency_ms(calls, device, warmup, repeats), strict=True):
        row.latency_ms = latency
    for row in rows:
        row.speedup = rows[0].latency_ms / row.latency_ms
        ideal = next((r for r in rows if r.method == "uniform" and r.budget == row.budget), None)
        row.ideal_fraction = ideal.latency_ms / row.latency_ms if ideal is not None else 1.0


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
    flops_only: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> dict:
    """Every method at every budget: FLOPs, and (unless `flops_only`, which runs on `proxy_config`) latency."""
    config = bench_config(config_name)
    model = build_model(proxy_config(config) if flops_only else config, device, dtype)
    inputs = bench_inputs(config, text_tokens, batch, device, dtype)
    n = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    if budgets is None:
        budgets = [max(1, round(b * n / 576)) for b in PAPER_BUDGETS]
    if methods is None:
        methods = [m for m in PRUNERS.names() if m != "identity"]
    for m in methods:
        PRUNERS.get(m)  # fail before running anything
    ordered = ["uniform", *[m for m in methods if m != "uniform"]]  # the ideal zero-cost selector first
    plan = [("identity", None), *[(m, b) for b in budgets for m in ordered]]
    rows: list[BenchRow] = []
    calls: list[Callable[[], object]] = []
    for method, budget in plan:
        progress(f"FLOPs of {method} @ {budget}")
        vlm = bench_vlm(model, method, budget)
        rows.append(flops_row(vlm, inputs, method, budget, config, text_tokens))
        if not flops_only:
            calls.append(lambda vlm=vlm: vlm.generate(**inputs, max_new_tokens=1))
    rows[0].method = "vanilla"
    fixed = prefill_cost(config, n, text_tokens)
    report = {
        "config": config_name,
        "flops_only": flops_only,
        "visual_tokens": n,
        "text_tokens": text_tokens,
        "batch": batch,
        "device": device,
        "hardware": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "vision_tflops": fixed.tflops("vision"),  # the same for every row: the tower sees the whole image
        "projector_tflops": fixed.tflops("projector"),
    }
    if flops_only:
        report["proxy"] = {
            "text_intermediate_size": model.config.text_config.intermediate_size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "note": "methods run on this proxy (the LLM MLP cut); FLOPs are analytic on the real config",
        }
    else:
        progress(f"latency: {len(calls)} configurations x {repeats} interleaved rounds")
        add_latency(rows, calls, device, warmup, repeats)
        report.update(warmup=warmup, repeats=repeats)
    report["rows"] = [asdict(r) for r in rows]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="scaled", choices=sorted(CONFIGS))
    parser.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    parser.add_argument(
        "--budgets", type=int_list, default=None, help="comma-separated (default: 192,128,64 scaled to N)"
    )
    parser.add_argument("--text-tokens", type=positive_int, default=92)
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on cuda)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument(
        "--flops-only", action="store_true", help="no timing: methods run on the MLP-cut proxy, FLOPs on the config"
    )
    parser.add_argument(
        "--out", default=None, help="JSON path (default: reports/bench_<config>_<device>.json, flops_<config>.json)"
    )
    args = parser.parse_args(argv)
    dtype_name = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("benchmarking") as status:
        report = run_bench(
            args.config,
            args.methods.split(",") if args.methods else None,
            args.budgets,
            args.text_tokens,
            args.batch,
            args.device,
            dtype,
            args.warmup,
            args.repeats,
            args.flops_only,
            progress=lambda msg: status.update(f"benchmarking {msg}"),
        )
    print_table(report)
    device = args.device.split(":")[0]
    default = f"reports/flops_{args.config}.json" if args.flops_only else f"reports/bench_{args.config}_{device}.json"
    out = Path(args.out or default)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out}")
    if args.flops_only:
        command = shlex.join(["python", "-m", "steprune.eval.bench", *(sys.argv[1:] if argv is None else argv)])
        out.with_suffix(".md").write_text(markdown_report(report, command))
        console.print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
