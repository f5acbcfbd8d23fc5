"""One GPU script: the LLaVA-1.5-7B Table-3 protocol and the scaling benchmark, in under 10 minutes.

    make bench-gpu                                        # on a CUDA machine: bf16, writes reports/*_gpu.{json,md}
    python -m steprune.eval.bench_gpu --device cpu --smoke --out-dir /tmp/x   # the CPU rehearsal the test runs

1. **Table 3** (`steprune.eval.bench.run_bench`): the LLaVA-1.5-7B architecture with random weights in bf16,
   batch 1, 576 visual + 92 text tokens; vanilla, every registered method at 192 / 128 / 64 tokens, uniform stride
   as the zero-cost ideal, and StepPrune with its (untrained, d_model = D_v) selector capped at T_max = budget;
   latency = vision tower + selection + LLM prefill to the first token (`generate(max_new_tokens=1)`), median of
   interleaved rounds after warm-up. The speed-up of StepPrune at 64 tokens, its selector included, is the
   headline (the paper: 1.88x on an A6000).
2. **The pointer loop on the device**: eager loop, `FastPointerLoop`, and `FastPointerLoop.cuda_graph` (the whole
   loop as one graph) at N 576, K 64 / 192, batch 1: time and whether the picks are identical (torch.equal).
3. **The scaling benchmark** (`steprune.eval.scaling`), full plan (N 144-4096, batch 1 and 8), the whole LLM depth
   timed (`--layers 32`).
Writes <out-dir>/table3_<dev>.{json,md}, pointer_<dev>.json (inside the table-3 report) and
scaling_<dev>.{json,md,png}, <dev> = gpu on CUDA (the GPU's name is in every report), else cpu. `--smoke` runs the
"micro" config and the scaling smoke plan (seconds, on a CPU).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from steprune.eval.bench import PAPER_BUDGETS, round_robin_latency_ms, run_bench
from steprune.eval.bench_report import markdown_report
from steprune.eval.scaling import LLAVA_7B, SMOKE, Plan, Widths, run_scaling, selector_for
from steprune.eval.scaling_report import figure
from steprune.eval.scaling_report import markdown as scaling_markdown
from steprune.selector.fast_pointer import FastPointerLoop


def pointer_on_device(widths: Widths, n: int, budgets: Sequence[int], device: str, dtype: torch.dtype) -> list[dict]:
    """Eager vs fast vs CUDA-graph pointer loop (decoder only, on random encoder outputs), picks compared."""
    selector = selector_for(widths, None, device, dtype)
    dec = selector.decoder
    h = torch.randn(1, n, dec.d_model, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    rows = []
    for k in budgets:
        fast = FastPointerLoop(dec)

        @torch.no_grad()
        def eager(k: int = k) -> torch.Tensor:
            return dec(h, k + 1, 1.0, continue_after_stop=True).chosen

        def run_fast(k: int = k, fast: FastPointerLoop = fast) -> torch.Tensor:
            return fast(h, k + 1, early_exit=False).chosen

        calls = [eager, run_fast]
        row = {"n": n, "budget": k, "steps": k + 1, "fast_same_picks": torch.equal(eager(), run_fast())}
        if device.startswith("cuda"):
            graph = fast.cuda_graph(1, n, k + 1, dtype)
            row["graph_same_picks"] = torch.equal(graph(h).chosen, eager())
            calls.append(lambda graph=graph: graph(h).chosen)
        times = round_robin_latency_ms(calls, device, 2, 5)
        row.update(eager_ms=times[0], fast_ms=times[1], graph_ms=times[2] if len(times) > 2 else None)
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--smoke", action="store_true", help="micro config + scaling smoke plan (a CPU rehearsal)")
    parser.add_argument("--out-dir", default="reports")
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: run it on a GPU machine, or rehearse with --device cpu --smoke")
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    tag = "gpu" if args.device.startswith("cuda") else "cpu"
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "-m", "steprune.eval.bench_gpu", *(sys.argv[1:] if argv is None else argv)])
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    config = "micro" if args.smoke else "llava-7b"
    log(f"Table 3 protocol on {config}")
    table = run_bench(config, None, None, 92, 1, args.device, dtype, warmup=1 if args.smoke else 3,
                      repeats=1 if args.smoke else 10, progress=log)  # fmt: skip
    widths = SMOKE if args.smoke else LLAVA_7B
    pointer_n, budgets = (64, [7, 21]) if args.smoke else (576, [min(PAPER_BUDGETS), max(PAPER_BUDGETS)])
    log("pointer loop: eager / fast / CUDA graph")
    table["pointer_loop"] = pointer_on_device(widths, pointer_n, budgets, args.device, dtype)
    table["command"] = command
    (out / f"table3_{tag}.json").write_text(json.dumps(table, indent=2))
    table["wall_s"] = time.perf_counter() - start
    (out / f"table3_{tag}.md").write_text(table3_markdown(table, command))
    if not args.skip_scaling:
        if args.smoke:
            plan = Plan([16, 64], [1, 2], d_models=[16], layers=1, min_run_time=0.01, mmtok_dense_ns=[64])
            plan.pointer_n, plan.pointer_budgets, plan.rounds = 64, [7, 21], 1
        else:
            plan = Plan([144, 576, 2304, 4096], [1, 8], layers=widths.llm_layers, min_run_time=0.2,
                        mmtok_dense_ns=[576, 2304, 4096])  # fmt: skip
        scaling = run_scaling(plan, widths, args.device, dtype, progress=log)
        scaling["command"] = command
        (out / f"scaling_{tag}.json").write_text(json.dumps(scaling, indent=2))
        (out / f"scaling_{tag}.md").write_text(scaling_markdown(scaling, f"scaling_{tag}.png"))
        figure(scaling).savefig(out / f"scaling_{tag}.png", dpi=120)
    log(f"done; wrote table3_{tag}.* and scaling_{tag}.* under {out}")
    return 0


def table3_markdown(table: dict, command: str) -> str:
    """bench's Table-3 page with the hardware named, then the pointer loop on the device."""
    head, _, rest = markdown_report(table, command).partition("\n")
    rest = rest.replace("Produced by (`OMP_WAIT_POLICY=PASSIVE nice -n 15` on a shared CPU):", "Produced by:")
    hardware = (
        f"**Hardware: {table['hardware']}** ({table['device']}, {table['dtype']}, torch {table['torch']}, "
        f"{table['cpu_threads']} CPU threads); vision tower + selection + prefill to the first token, median of "
        f"{table['repeats']} interleaved rounds after {table['warmup']} warm-up; {table['wall_s']:.0f} s for this part."
    )
    return "\n".join([head, "", hardware, rest]) + pointer_markdown(table["pointer_loop"])


def pointer_markdown(rows: list[dict]) -> str:
    lines = [
        "",
        "## The pointer loop on this device (decoder only, batch 1, d_model = D_v)",
        "",
        "| N | K | steps | eager ms | fast ms | CUDA graph ms | fast picks == eager | graph picks == eager |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        graph = "—" if r["graph_ms"] is None else f"{r['graph_ms']:.1f}"
        lines.append(
            f"| {r['n']} | {r['budget']} | {r['steps']} | {r['eager_ms']:.1f} | {r['fast_ms']:.1f} | {graph} | "
            f"{r['fast_same_picks']} | {r.get('graph_same_picks', '—')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
