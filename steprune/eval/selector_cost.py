"""StepPrune's selector cost as a fraction of the pruned LLM prefill, on the LLaVA-1.5-7B widths (random weights).

    python -m steprune.eval.selector_cost                                 # llava-7b, K = 192/128/64, CPU fp32
    python -m steprune.eval.selector_cost --device cuda --dtype bfloat16  # the same on a GPU

For each budget K, one image and a prompt of `--text-tokens` tokens (batch 1):
* the selector: encoder over the N visual + text tokens, then K + 1 pointer steps (K choices and the STOP: what
  a trained selector that keeps K tokens runs), then the spatial sort — `StepPruneSelector.select`'s work; an
  untrained selector would stop at random, so the loop is run for exactly K + 1 steps (`continue_after_stop`);
* the LLM prefill of the pruned sequence (K + text tokens), up to the final norm, on real `LlamaModel` decoder
  layers at the config's widths. Vicuna-7B in fp32 is 27 GB, more than a 24 GiB CPU machine holds, so
  `--layers` of its identical 32 layers are timed and the time is scaled by 32 / layers (`--layers 32` on a
  GPU times the whole LLM).
Both are timed in interleaved rounds (median); FLOPs are the analytic counts of `steprune.eval.flops` and
`StepPruneSelector.flops` (multiply-add = 2). Writes reports/selector_cost_<config>_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import LlamaModel

from steprune.eval.bench import CONFIGS, PAPER_BUDGETS, bench_config, round_robin_latency_ms
from steprune.eval.flops import llm_prefill_flops
from steprune.pruners.stepprune import untrained_selector
from steprune.selector.selector import StepPruneSelector, spatial_order


@dataclass
class CostRow:
    budget: int  # K, visual tokens kept
    pointer_steps: int  # K + 1
    selector_gflops: float
    llm_tflops: float  # the pruned prefill: K + text tokens, every layer
    flops_fraction: float  # selector / pruned prefill
    selector_ms: float
    llm_ms: float  # scaled to the config's depth when fewer layers were timed
    time_fraction: float  # selector / pruned prefill


def selector_call(selector: StepPruneSelector, vision: torch.Tensor, text: torch.Tensor, steps: int) -> Callable:
    """One selection of exactly `steps` pointer steps on vision (1, N, D_v) and text (1, L, D_t)."""
    text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)

    @torch.no_grad()
    def call() -> torch.Tensor:
        out = selector.pointer(vision, text, text_mask, 1.0, 1.0, steps, continue_after_stop=True)
        assert out.actions.shape[1] == steps, f"the pointer ran {out.actions.shape[1]} steps, not {steps}"
        return spatial_order(out.chosen, out.chosen_mask, vision.shape[1]).keep

    return call


def llm_call(model: LlamaModel, tokens: int, device: str, dtype: torch.dtype) -> Callable:
    """The prefill of `tokens` positions through `model` (causal, SDPA, KV cache written as in generation)."""
    embeds = torch.randn(1, tokens, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    embeds = embeds.to(device, dtype)

    @torch.no_grad()
    def call() -> torch.Tensor:
        return model(inputs_embeds=embeds, use_cache=True).last_hidden_state

    return call


def run_selector_cost(
    config_name: str = "llava-7b",
    budgets: Sequence[int] | None = None,
    text_tokens: int = 92,
    layers: int = 4,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    warmup: int = 1,
    repeats: int = 3,
) -> dict:
    """Selector vs pruned-prefill FLOPs and time at each budget; the report as a JSON-ready dict."""
    config = bench_config(config_name)
    text_config = config.text_config
    n = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    budgets = list(budgets or [round(b * n / 576) for b in PAPER_BUDGETS])
    too_big = [k for k in budgets if not 1 <= k < n]
    if too_big:
        raise ValueError(f"budgets {too_big} are not in 1..{n - 1}: {config_name} has {n} visual tokens")
    depth = text_config.num_hidden_layers
    if not 1 <= layers <= depth:
        raise ValueError(f"--layers must be in 1..{depth} (the LLM's depth), got {layers}")
    d_vision, d_text = config.vision_config.hidden_size, text_config.hidden_size
    selector = untrained_selector(d_vision, d_text).to(device=device, dtype=dtype)
    timed = text_config.__class__(**{**text_config.to_dict(), "num_hidden_layers": layers})
    timed._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        llm = LlamaModel(timed).to(dtype).eval()
    generator = torch.Generator().manual_seed(0)
    vision = torch.randn(1, n, d_vision, generator=generator).to(device, dtype)
    text = torch.randn(1, text_tokens, d_text, generator=generator).to(device, dtype)
    calls = []
    for k in budgets:
        calls += [selector_call(selector, vision, text, k + 1), llm_call(llm, k + text_tokens, device, dtype)]
    times = round_robin_latency_ms(calls, device, warmup, repeats)
    rows = []
    for i, k in enumerate(budgets):
        sel_flops = selector.flops(n, text_tokens, k + 1)
        prefill = llm_prefill_flops(text_config, k + text_tokens)
        sel_ms, llm_ms = times[2 * i], times[2 * i + 1] * depth / layers
        rows.append(
            CostRow(k, k + 1, sel_flops / 1e9, prefill / 1e12, sel_flops / prefill, sel_ms, llm_ms, sel_ms / llm_ms)
        )
    return {
        "config": config_name,
        "visual_tokens": n,
        "text_tokens": text_tokens,
        "llm_layers": depth,
        "llm_layers_timed": layers,
        "selector_parameters": sum(p.numel() for p in selector.parameters()),
        "device": device,
        "hardware": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "warmup": warmup,
        "repeats": repeats,
        "rows": [asdict(r) for r in rows],
    }


COLUMNS = ("K", "steps", "selector GFLOPs", "prefill TFLOPs", "FLOPs %", "selector ms", "prefill ms", "time %")


def table_cells(report: dict) -> list[list[str]]:
    return [
        [
            str(r["budget"]),
            str(r["pointer_steps"]),
            f"{r['selector_gflops']:.1f}",
            f"{r['llm_tflops']:.3f}",
            f"{100 * r['flops_fraction']:.2f}",
            f"{r['selector_ms']:.1f}",
            f"{r['llm_ms']:.1f}",
            f"{100 * r['time_fraction']:.2f}",
        ]
        for r in report["rows"]
    ]


def markdown(report: dict, command: str) -> str:
    r = report
    lines = [
        f"# StepPrune's selector cost on the {r['config']} widths ({r['device']}, {r['dtype']})",
        "",
        f"`{command}` — {r['hardware']}, {r['cpu_threads']} threads, torch {r['torch']}; median of {r['repeats']} "
        f"interleaved rounds after {r['warmup']} warm-up. Random weights; {r['visual_tokens']} visual + "
        f"{r['text_tokens']} text tokens, batch 1; selector {r['selector_parameters'] / 1e6:.1f} M parameters. "
        f"The pruned prefill was timed on {r['llm_layers_timed']} of the LLM's {r['llm_layers']} decoder layers and "
        "scaled to all of them. *steps*: pointer steps (K choices and the STOP); *prefill*: the LLM prefill of the K "
        "kept + text tokens; *%*: the selector's share of that prefill.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(cells) + " |" for cells in table_cells(report)),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="llava-7b", choices=sorted(CONFIGS))
    parser.add_argument("--budgets", default=None, help="comma-separated K (default: 192,128,64 scaled to N)")
    parser.add_argument("--text-tokens", type=int, default=92)
    parser.add_argument("--layers", type=int, default=4, help="LLM decoder layers to time (scaled to the depth)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on cuda)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON path (default: reports/selector_cost_<config>_<device>.json)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else None
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    with console.status(f"timing the selector and the pruned prefill on {args.config}"):
        report = run_selector_cost(
            args.config, budgets, args.text_tokens, args.layers, args.device, dtype, args.warmup, args.repeats
        )
    table = Table(title=f"StepPrune selector vs pruned LLM prefill ({args.config}, {args.device})")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for cells in table_cells(report):
        table.add_row(*cells)
    Console().print(table)
    out = Path(args.out or f"reports/selector_cost_{args.config}_{args.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    command = shlex.join(["python", "-m", "steprune.eval.selector_cost", *(sys.argv[1:] if argv is None else argv)])
    out.with_suffix(".md").write_text(markdown(report, command))
    console.print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
