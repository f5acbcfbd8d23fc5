"""What selection costs as the work grows: every method's selection time, FLOPs and peak memory against N and K.

    python -m steprune.eval.scaling                          # N 144/576/2304/4096, K 11.1/33.3 % of N, batch 1 and 8
    python -m steprune.eval.scaling --ns 144,576 --methods mmtok,steprune --batches 1 --layers 1   # a CPU in minutes
    python -m steprune.eval.scaling --smoke                  # tiny widths, seconds (what the test runs)
    make bench-scaling ARGS="--device cuda"

At the LLaVA-1.5-7B widths (D_v 1024, D_llm 4096, 92 prompt tokens; random inputs and weights), for each N (a
square grid), budget K = round(fraction * N) and batch B:
* every **pre-LLM** method's `select` on a `PruneContext` of random tokens, with vision attentions from two real
  CLIP encoder layers at the tower's width (`ClipVisionAccess`: the CLS row and keys of layers -2 and -1, what
  VisionZip, HoloV and PruMerge+ read; a fresh access per call, so its projections are paid every time);
* **StepPrune's selector** (untrained, d_model = D_v, and `--d-models` narrower ones): encoder over N + L tokens,
  then exactly K + 1 pointer steps of `FastPointerLoop` (what a trained selector keeping K runs), spatial sort;
* the **pruned LLM prefill** at K + L tokens: analytic FLOPs (`steprune.eval.flops`), time of `--layers` real
  decoder layers at the LLM's widths scaled to its depth (as `steprune.eval.selector_cost`);
* **in-LLM** methods (FastV, DART, PDrop, SparseVLM): the extra cost of their layers that run at full length
  before the first drop, FLOPs and time, (first drop layer) x (layer at N + L - layer at K + L).
Time: `torch.utils.benchmark.Timer.blocked_autorange` (median, after one warm-up call, the process's threads);
peak memory: `steprune.eval.peak_memory.peak_bytes` (CUDA: the allocator's peak; CPU: live tensor bytes counted
by a dispatch mode), in a separate call. Fitted growth exponents: the slope of log time against log N at a fixed
budget fraction, and against log K at a fixed N (`steprune.eval.scaling_report`).

Before/after (interleaved rounds, `round_robin_latency_ms`): the eager pointer loop against `FastPointerLoop`
(selector at d_model = D_v, N 576, K 64 and 192), and MMTok's original dense greedy against the lazy greedy at
`--mmtok-dense-ns`. The memory bandwidth (a large copy, and a matrix-vector product) gives the matrix-vector
lower bound of a pointer step: the decoder weights a step reads (and the memory keys/values) over the bandwidth.
Writes reports/scaling_<device>.{json,md,png} (`--out` for another JSON path).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark
from transformers import CLIPVisionConfig, LlamaConfig, LlamaModel
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from steprune.backbones.vision_access import ClipVisionAccess
from steprune.cli_args import int_list, positive_int
from steprune.eval.bench import round_robin_latency_ms
from steprune.eval.flops import decoder_layer_flops, in_llm_prefill_flops, llm_prefill_flops
from steprune.eval.peak_memory import peak_bytes
from steprune.pruners import PRUNERS, PruneContext, Pruner, PruneResult
from steprune.pruners.mmtok import coverage_matrix, dense_greedy_max_coverage
from steprune.pruners.stepprune import untrained_selector
from steprune.selector.fast_pointer import FastPointerLoop
from steprune.selector.selector import StepPruneSelector, spatial_order

FRACTIONS = (1 / 9, 1 / 3)  # 11.1 % and 33.3 % of N (64 and 192 of 576)


@dataclass(frozen=True)
class Widths:
    """The model widths the benchmark is costed at."""

    d_vision: int = 1024
    vision_mlp: int = 4096
    vision_heads: int = 16
    d_llm: int = 4096
    llm_mlp: int = 11008
    llm_heads: int = 32
    llm_layers: int = 32
    text_tokens: int = 92

    def llm_config(self, layers: int | None = None) -> LlamaConfig:
        config = LlamaConfig(
            hidden_size=self.d_llm,
            intermediate_size=self.llm_mlp,
            num_hidden_layers=layers or self.llm_layers,
            num_attention_heads=self.llm_heads,
            vocab_size=64,
            max_position_embeddings=8192,
        )
        config._attn_implementation = "sdpa"
        return config


LLAVA_7B = Widths()
SMOKE = Widths(32, 64, 4, 64, 128, 4, 4, 8)


@dataclass
class Row:
    method: str
    n: int
    budget: int
    batch: int
    kind: str  # "pre-llm" | "selector" | "in-llm"
    fraction: float = 0.0  # the budget fraction K was rounded from
    selection_ms: float | None = None
    selection_gflops: float | None = None  # per sample
    peak_mib: float | None = None
    prefill_ms: float | None = None  # the pruned prefill at K + L, whole LLM (scaled)
    prefill_tflops: float = 0.0  # per sample
    extra_ms: float | None = None  # in-LLM: the full-length layers before the first drop, beyond the pruned prefill
    extra_tflops: float | None = None  # per sample
    first_drop_layer: int | None = None
    schedule_tflops: float | None = None  # in-LLM: the whole schedule, per sample
    note: str = ""


@dataclass
class Plan:
    ns: list[int]
    batches: list[int]
    fractions: list[float] = field(default_factory=lambda: list(FRACTIONS))
    methods: list[str] | None = None  # None: every registered method but identity
    d_models: list[int] = field(default_factory=lambda: [256, 512])
    layers: int = 1  # LLM decoder layers timed (scaled to the depth); 0: no prefill timing
    min_run_time: float = 0.5
    mmtok_dense_ns: list[int] = field(default_factory=lambda: [576])
    pointer_n: int = 576
    pointer_budgets: list[int] = field(default_factory=lambda: [64, 192])
    rounds: int = 3


def budget_for(n: int, fraction: float) -> int:
    return max(1, round(fraction * n))


def time_ms(call: Callable[[], object], min_run_time: float) -> float:
    """Median milliseconds of `call` (torch.utils.benchmark, after one warm-up call, with the process's threads)."""
    call()
    timer = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


class Inputs:
    """Random inputs at one (N, batch) and the stand-in vision layers, built once and shared by every method."""

    def __init__(self, widths: Widths, n: int, batch: int, tower: nn.ModuleList, device: str, dtype: torch.dtype):
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"N={n} is not a square grid")
        g = torch.Generator().manual_seed(n * 10 + batch)
        self.grid = (side, side)

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=g).to(device, dtype)

        self.image_tokens = rand(batch, n, widths.d_llm)
        self.vision_features = rand(batch, n, widths.d_vision)
        self.text = rand(batch, widths.text_tokens, widths.d_llm)
        self.text_mask = torch.ones(batch, widths.text_tokens, dtype=torch.bool, device=device)
        self.hidden = (rand(batch, n + 1, widths.d_vision), rand(batch, n + 1, widths.d_vision))  # layers -2, -1
        self.tower = tower

    def context(self, budget: int) -> PruneContext:
        """A fresh context (a fresh vision access: nothing cached from an earlier call)."""
        return PruneContext(
            self.image_tokens,
            self.vision_features,
            self.text,
            self.text_mask,
            budget,
            self.grid,
            vision=ClipVisionAccess(self.hidden, self.tower),
        )


def stand_in_tower(widths: Widths, device: str, dtype: torch.dtype) -> nn.ModuleList:
    """Two CLIP encoder layers at the tower's width: layers -2 and -1 of `ClipVisionAccess` (index mod 2)."""
    config = CLIPVisionConfig(
        hidden_size=widths.d_vision, intermediate_size=widths.vision_mlp, num_attention_heads=widths.vision_heads
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.ModuleList(CLIPEncoderLayer(config) for _ in range(2)).to(device, dtype).eval()


def selector_for(widths: Widths, d_model: int | None, device: str, dtype: torch.dtype) -> StepPruneSelector:
    if d_model is None or d_model == widths.d_vision:
        selector = untrained_selector(widths.d_vision, widths.d_llm)
    else:
        heads = next(h for h in (8, 4, 2, 1) if d_model % h == 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            selector = StepPruneSelector(
                widths.d_vision, widths.d_llm, d_model=d_model, encoder_heads=heads, decoder_heads=heads
            ).eval()
    return selector.to(device, dtype)


def selector_call(selector: StepPruneSelector, inputs: Inputs, steps: int, eager: bool = False) -> Callable:
    """Encoder + exactly `steps` pointer steps (fast loop, or the eager `PointerDecoder.forward`) + spatial sort."""
    vision, text, mask = inputs.vision_features, inputs.text, inputs.text_mask
    loop = FastPointerLoop(selector.decoder)

    @torch.no_grad()
    def call() -> torch.Tensor:
        h = selector.encoder(vision, text, mask, 1.0)  # (B, N, D)
        if eager:
            out = selector.decoder(h, steps, 1.0, continue_after_stop=True)
            chosen, chosen_mask = out.chosen, out.chosen_mask
        else:
            chosen, chosen_mask, _ = loop(h, steps, early_exit=False)
        return spatial_order(chosen, chosen_mask, vision.shape[1]).keep

    return call


class PrefillTimer:
    """Time of `layers` real decoder layers at (batch, tokens), scaled to the LLM's depth; cached per shape."""

    def __init__(self, widths: Widths, layers: int, device: str, dtype: torch.dtype, min_run_time: float) -> None:
        self.widths, self.layers, self.device, self.dtype, self.min_run_time = (
            widths,
            layers,
            device,
            dtype,
            min_run_time,
        )
        self.model: LlamaModel | None = None
        self.cache: dict[tuple[int, int], float] = {}

    def __call__(self, batch: int, tokens: int) -> float | None:
        if self.layers == 0:
            return None
        if self.model is None:
            with torch.random.fork_rng(devices=[]), torch.device(self.device):
                torch.manual_seed(0)
                self.model = LlamaModel(self.widths.llm_config(self.layers)).to(self.dtype).eval()
        if (batch, tokens) not in self.cache:
            g = torch.Generator().manual_seed(tokens)
            embeds = torch.randn(batch, tokens, self.widths.d_llm, generator=g).to(self.device, self.dtype)
            model = self.model

            @torch.no_grad()
            def call() -> torch.Tensor:
                return model(inputs_embeds=embeds, use_cache=True).last_hidden_state

            scaled = time_ms(call, self.min_run_time) * self.widths.llm_layers / self.layers
            self.cache[(batch, tokens)] = scaled
        return self.cache[(batch, tokens)]


def select(pruner: Pruner, inputs: Inputs, budget: int) -> PruneResult:
    return pruner.select(inputs.context(budget))


def in_llm_methods(methods: Sequence[str], probe: PruneContext, depth: int) -> set[str]:
    """The methods that prune inside the LLM (they return layer drops)."""
    return {m for m in methods if m != "steprune" and PRUNERS.create(m).layer_drops(probe, depth)}


def in_llm_row(method: str, inputs: Inputs, n: int, k: int, batch: int, widths: Widths, prefill: PrefillTimer) -> Row:
    pruner = PRUNERS.create(method)
    ctx = inputs.context(k)
    first = min(drop.layer for drop in pruner.layer_drops(ctx, widths.llm_layers))
    schedule = pruner.schedule(n, widths.llm_layers, k) if hasattr(pruner, "schedule") else [(first, k)]
    config, text = widths.llm_config(), widths.text_tokens
    d, m = widths.d_llm, widths.llm_mlp
    extra = first * (decoder_layer_flops(n + text, d, m) - decoder_layer_flops(k + text, d, m))
    full, pruned = prefill(batch, n + text), prefill(batch, k + text)
    extra_ms = None if full is None else first * (full - pruned) / widths.llm_layers
    return Row(
        method,
        n,
        k,
        batch,
        "in-llm",
        prefill_ms=pruned,
        prefill_tflops=llm_prefill_flops(config, k + text) / 1e12,
        extra_ms=extra_ms,
        extra_tflops=extra / 1e12,
        first_drop_layer=first,
        schedule_tflops=in_llm_prefill_flops(config, text, [(0, n), *schedule]) / 1e12,
    )


def measure(row: Row, call: Callable[[], object], flops: Callable[[object], float], plan: Plan, device: str) -> None:
    """Fill the row's selection time, FLOPs (per sample) and peak memory, or say why it could not run."""
    try:
        result = call()
        row.selection_gflops = flops(result) / row.batch / 1e9
        row.selection_ms = time_ms(call, plan.min_run_time)
        row.peak_mib = peak_bytes(call, device) / 2**20
    except (torch.OutOfMemoryError, RuntimeError) as error:  # which did not fit, and why; the others go on
        if not isinstance(error, torch.OutOfMemoryError) and "allocate" not in str(error):
            raise
        row.note = f"out of memory: {str(error).splitlines()[0][:120]}"
    finally:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def run_rows(plan: Plan, widths: Widths, device: str, dtype: torch.dtype, progress: Callable[[str], None]) -> list[Row]:
    tower = stand_in_tower(widths, device, dtype)
    methods = plan.methods or [m for m in PRUNERS.names() if m != "identity"]
    for m in methods:
        PRUNERS.get(m)  # did-you-mean before anything runs
    probe = Inputs(widths, plan.ns[0], 1, tower, device, dtype).context(1)
    in_llm = in_llm_methods(methods, probe, widths.llm_layers)
    selectors = {}
    if "steprune" in methods:
        selectors = {"steprune": selector_for(widths, None, device, dtype)}
        selectors |= {f"steprune-d{d}": selector_for(widths, d, device, dtype) for d in plan.d_models}
    prefill = PrefillTimer(widths, plan.layers, device, dtype, plan.min_run_time)
    text = widths.text_tokens
    rows = []
    for n in plan.ns:
        for batch in plan.batches:
            inputs = Inputs(widths, n, batch, tower, device, dtype)
            for fraction in plan.fractions:
                k = budget_for(n, fraction)
                progress(f"N {n}, batch {batch}, K {k}: pruned prefill")
                pruned_ms = prefill(batch, k + text)
                pruned_tflops = llm_prefill_flops(widths.llm_config(), k + text) / 1e12
                for method in [m for m in methods if m != "steprune"] + list(selectors):
                    progress(f"N {n}, batch {batch}, K {k}: {method}")
                    if method in in_llm:
                        rows.append(in_llm_row(method, inputs, n, k, batch, widths, prefill))
                        rows[-1].fraction = fraction
                        continue
                    if method in selectors:
                        row = Row(
                            method,
                            n,
                            k,
                            batch,
                            "selector",
                            fraction,
                            prefill_ms=pruned_ms,
                            prefill_tflops=pruned_tflops,
                        )
                        flops = batch * selectors[method].flops(n, text, k + 1)
                        measure(
                            row, selector_call(selectors[method], inputs, k + 1), lambda _, f=flops: f, plan, device
                        )
                    else:
                        row = Row(
                            method, n, k, batch, "pre-llm", fraction, prefill_ms=pruned_ms, prefill_tflops=pruned_tflops
                        )
                        call = partial(select, PRUNERS.create(method), inputs, k)
                        measure(row, call, lambda result: result.selection_flops, plan, device)
                    rows.append(row)
    return rows


def pointer_before_after(plan: Plan, widths: Widths, device: str, dtype: torch.dtype, tower: nn.ModuleList) -> list:
    """Eager loop vs FastPointerLoop, interleaved rounds, d_model = D_v, batch 1 and 8 (or the plan's batches)."""
    selector = selector_for(widths, None, device, dtype)
    out = []
    for batch in plan.batches:
        inputs = Inputs(widths, plan.pointer_n, batch, tower, device, dtype)
        calls = []
        for k in plan.pointer_budgets:
            calls += [selector_call(selector, inputs, k + 1, eager=True), selector_call(selector, inputs, k + 1)]
        times = round_robin_latency_ms(calls, device, 1, plan.rounds)
        for i, k in enumerate(plan.pointer_budgets):
            eager, fast = times[2 * i], times[2 * i + 1]
            out.append({"n": plan.pointer_n, "budget": k, "batch": batch, "eager_ms": eager, "fast_ms": fast})
    return out


def dense_mmtok(inputs: Inputs, budget: int) -> torch.Tensor:
    """MMTok's picks (pick order) by the original dense greedy, at the pruner's default hyperparameters."""
    args = (inputs.image_tokens, inputs.vision_features, inputs.text, inputs.text_mask, 0.5, 0.02, 0.2)
    return dense_greedy_max_coverage(coverage_matrix(*args), budget)[0]


def mmtok_before_after(plan: Plan, widths: Widths, device: str, dtype: torch.dtype, tower: nn.ModuleList) -> list:
    """The original dense greedy (on the (B, R, N) coverage matrix) vs the pruner's lazy greedy, K = N / 3, batch 1."""
    out = []
    for n in plan.mmtok_dense_ns:
        inputs = Inputs(widths, n, 1, tower, device, dtype)
        k = budget_for(n, 1 / 3)
        dense = partial(dense_mmtok, inputs, k)
        lazy = partial(lambda *a: select(*a).keep, PRUNERS.create("mmtok"), inputs, k)

        same = torch.equal(dense().sort(dim=1).values, lazy())
        dense_ms, lazy_ms = round_robin_latency_ms([dense, lazy], device, 0, plan.rounds)
        dense_mib, lazy_mib = (peak_bytes(c, device) / 2**20 for c in (dense, lazy))
        out.append(
            {
                "n": n,
                "budget": k,
                "batch": 1,
                "dense_ms": dense_ms,
                "lazy_ms": lazy_ms,
                "dense_peak_mib": dense_mib,
                "lazy_peak_mib": lazy_mib,
                "coverage_mib": (n + widths.text_tokens) * n * 4 / 2**20,
                "same_picks": same,
            }
        )
    return out


def bandwidth(device: str, mib: int = 256, min_run_time: float = 0.5) -> dict:
    """Memory bandwidth in GB/s: a large copy (read + write) and an fp32 matrix-vector product (the matrix read)."""
    x = torch.randn(mib * 2**18, device=device)  # mib MiB of fp32
    y = torch.empty_like(x)
    side = math.isqrt(x.numel())
    w, v = x[: side * side].view(side, side), torch.randn(side, device=device)
    copy_ms = time_ms(lambda: y.copy_(x), min_run_time)
    gemv_ms = time_ms(lambda: w @ v, min_run_time)
    return {
        "bytes": x.numel() * 4,
        "copy_gbs": 2 * x.numel() * 4 / copy_ms / 1e6,
        "gemv_gbs": side * side * 4 / gemv_ms / 1e6,
    }


def step_bytes(selector: StepPruneSelector, n: int, dtype: torch.dtype) -> dict:
    """Bytes one pointer step must read per sample: the decoder weights it applies, and M's cross-attention keys
    and values with the pointer keys (the cache of earlier steps is small beside them)."""
    dec = selector.decoder
    per_image = {id(layer.cross_kv.weight) for layer in dec.layers} | {id(layer.cross_kv.bias) for layer in dec.layers}
    per_image.add(id(dec.pointer_k.weight))
    weights = sum(p.numel() for p in dec.parameters() if id(p) not in per_image and p.dim() > 0)
    size = torch.tensor([], dtype=dtype).element_size()
    memory = (2 * len(dec.layers) + 1) * (n + 1) * dec.d_model
    return {"weights": weights * size, "memory": memory * size}


def run_scaling(
    plan: Plan,
    widths: Widths = LLAVA_7B,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: Callable[[str], None] = lambda _: None,
) -> dict:
    """The whole benchmark as a JSON-ready dict (see the module docstring)."""
    rows = run_rows(plan, widths, device, dtype, progress)
    tower = stand_in_tower(widths, device, dtype)
    report = {
        "device": device,
        "hardware": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "widths": asdict(widths),
        "plan": asdict(plan),
        "rows": [asdict(r) for r in rows],
    }
    progress("pointer loop before/after")
    report["pointer_before_after"] = pointer_before_after(plan, widths, device, dtype, tower)
    if plan.mmtok_dense_ns and (plan.methods is None or "mmtok" in plan.methods):
        progress("MMTok dense vs lazy greedy")
        report["mmtok_before_after"] = mmtok_before_after(plan, widths, device, dtype, tower)
    progress("memory bandwidth")
    report["bandwidth"] = bandwidth(device, 256 if widths == LLAVA_7B else 16, plan.min_run_time)
    with torch.device("meta"):  # shapes only
        selectors = {d: selector_for(widths, d, "meta", dtype) for d in [widths.d_vision, *plan.d_models]}
    report["step_bytes"] = {str(d): step_bytes(s, plan.pointer_n, dtype) for d, s in selectors.items()}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int_list, default=[144, 576, 2304, 4096], help="visual tokens (square grids)")
    parser.add_argument("--batches", type=int_list, default=[1, 8])
    parser.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    parser.add_argument("--d-models", type=int_list, default=[256, 512], help="narrower selectors beside d_model=D_v")
    parser.add_argument("--layers", type=int, default=1, help="LLM decoder layers timed (scaled); 0: no prefill timing")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per timing (blocked_autorange)")
    parser.add_argument("--mmtok-dense-ns", type=int_list, default=[576, 2304], help="N of the dense-vs-lazy table")
    parser.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds of the before/after tables")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on cuda)")
    parser.add_argument("--smoke", action="store_true", help="tiny widths and N, seconds (the test)")
    parser.add_argument("--out", default=None, help="JSON path (default: reports/scaling_<device>.json)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    plan = Plan(
        args.ns,
        args.batches,
        methods=args.methods.split(",") if args.methods else None,
        d_models=args.d_models,
        layers=args.layers,
        min_run_time=args.min_run_time,
        mmtok_dense_ns=args.mmtok_dense_ns,
        rounds=args.rounds,
    )
    widths = LLAVA_7B
    if args.smoke:
        widths = SMOKE
        plan = Plan(
            [16, 64], [1, 2], methods=plan.methods, d_models=[16], layers=1, min_run_time=0.01, mmtok_dense_ns=[64]
        )
        plan.pointer_n, plan.pointer_budgets, plan.rounds = 64, [7, 21], 1
    from rich.console import Console

    from steprune.eval.scaling_report import figure, markdown, print_summary

    console = Console(stderr=True)
    with console.status("scaling benchmark") as status:
        report = run_scaling(plan, widths, args.device, dtype, progress=lambda m: status.update(f"scaling: {m}"))
    out = Path(args.out or f"reports/scaling_{args.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "-m", "steprune.eval.scaling", *(sys.argv[1:] if argv is None else argv)])
    report["command"] = command
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report, out.with_suffix(".png").name))
    figure(report).savefig(out.with_suffix(".png"), dpi=120)
    print_summary(report)
    console.print(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
