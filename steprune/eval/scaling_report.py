"""The scaling benchmark's report: fitted growth exponents, the Markdown tables and the log-log figure.

    exponents(report["rows"])                   # {(method, batch): {"n": slope in log N, "k": slope in log K}}
    markdown(report, "scaling_cpu.png"); figure(report).savefig("reports/scaling_cpu.png")

Growth exponent in N: the least-squares slope of log(time) against log(N) over the N measured, at each budget
fraction (K grows with N), averaged over the fractions. In K: the slope of log(time) against log(K) between the
budgets at each N, averaged over N. For in-LLM methods the time is their extra full-length layers. Built on
`matplotlib.figure.Figure` directly (no pyplot, no global backend state).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter


def _time(row: dict) -> float | None:
    return row["extra_ms"] if row["kind"] == "in-llm" else row["selection_ms"]


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log y against log x; None with fewer than two distinct x."""
    points = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y is not None and y > 0]
    if len({x for x, _ in points}) < 2:
        return None
    mx, my = statistics.fmean(x for x, _ in points), statistics.fmean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def exponents(rows: list[dict]) -> dict[tuple[str, int], dict[str, float | None]]:
    """Per (method, batch): the growth exponents of its time in N and in K (see the module docstring)."""
    by_fraction: dict[tuple[str, int, float], list] = defaultdict(list)
    by_n: dict[tuple[str, int, int], list] = defaultdict(list)
    for r in rows:
        by_fraction[(r["method"], r["batch"], r["fraction"])].append((r["n"], _time(r)))
        by_n[(r["method"], r["batch"], r["n"])].append((r["budget"], _time(r)))
    out: dict[tuple[str, int], dict[str, float | None]] = {}
    for key in dict.fromkeys((r["method"], r["batch"]) for r in rows):
        in_n = [s for (m, b, _), p in by_fraction.items() if (m, b) == key and (s := _slope(p)) is not None]
        in_k = [s for (m, b, _), p in by_n.items() if (m, b) == key and (s := _slope(p)) is not None]
        out[key] = {"n": statistics.fmean(in_n) if in_n else None, "k": statistics.fmean(in_k) if in_k else None}
    return out


def _f(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _share(row: dict) -> str:
    t, prefill = _time(row), row["prefill_ms"]
    return "—" if t is None or not prefill else f"{100 * t / prefill:.2f}"


def markdown(report: dict, figure_name: str) -> str:
    r, w = report, report["widths"]
    lines = [
        f"# What selection costs as N grows ({r['device']}, {r['dtype']})",
        "",
        f"`{r.get('command', 'python -m steprune.eval.scaling')}` — {r['hardware']}, {r['cpu_threads']} threads, "
        f"torch {r['torch']}. Widths D_v {w['d_vision']}, D_llm {w['d_llm']}, {w['llm_layers']} LLM layers, "
        f"{w['text_tokens']} prompt tokens; random inputs and weights. Selection time: median of "
        "torch.utils.benchmark's blocked_autorange after a warm-up; peak: the most tensor memory the selection holds "
        "above its inputs (CUDA: the allocator's peak; CPU: live tensor bytes counted by a dispatch mode). *prefill*: "
        f"the pruned LLM prefill at K + {w['text_tokens']} tokens ({r['plan']['layers']} decoder layer(s) timed, "
        "scaled to the depth); *%*: selection time over that prefill's time. FLOPs and GFLOPs are per sample. "
        "In-LLM methods: the extra cost of their layers run at full length before the first drop.",
        "",
        f"![selection time against N]({figure_name})",
        "",
        "## Growth exponents (time ~ N^a at a fixed budget fraction, ~ K^b at a fixed N)",
        "",
        "| method | batch | a (in N) | b (in K) |",
        "|---|---|---|---|",
    ]
    for (method, batch), e in exponents(r["rows"]).items():
        lines.append(f"| {method} | {batch} | {_f(e['n'], 2)} | {_f(e['k'], 2)} |")
    lines += [
        "",
        "## Every method at every N",
        "",
        "| N | K | batch | method | ms | GFLOPs | peak MiB | prefill ms | prefill TFLOPs | % | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        if row["kind"] == "in-llm":
            continue
        lines.append(
            f"| {row['n']} | {row['budget']} | {row['batch']} | {row['method']} | {_f(row['selection_ms'], 2)} | "
            f"{_f(row['selection_gflops'], 3)} | {_f(row['peak_mib'])} | {_f(row['prefill_ms'])} | "
            f"{row['prefill_tflops']:.3f} | {_share(row)} | {row['note']} |"
        )
    lines += [
        "",
        "## In-LLM methods: the full-length layers before the first drop",
        "",
        "| N | K | batch | method | first drop | extra ms | extra TFLOPs | pruned prefill ms | % | schedule TFLOPs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in (x for x in r["rows"] if x["kind"] == "in-llm"):
        lines.append(
            f"| {row['n']} | {row['budget']} | {row['batch']} | {row['method']} | {row['first_drop_layer']} | "
            f"{_f(row['extra_ms'])} | {row['extra_tflops']:.3f} | {_f(row['prefill_ms'])} | {_share(row)} | "
            f"{row['schedule_tflops']:.3f} |"
        )
    lines += _before_after(r)
    return "\n".join(lines) + "\n"


def _before_after(r: dict) -> list[str]:
    lines = [
        "",
        "## Pointer loop: eager (PointerDecoder.forward) vs FastPointerLoop, interleaved rounds (same picks, tested)",
        "",
        "| N | K | batch | eager ms | fast ms | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for x in r["pointer_before_after"]:
        lines.append(
            f"| {x['n']} | {x['budget']} | {x['batch']} | {x['eager_ms']:.1f} | {x['fast_ms']:.1f} | "
            f"{x['eager_ms'] / x['fast_ms']:.2f}x |"
        )
    if r.get("mmtok_before_after"):
        lines += [
            "",
            "## MMTok: the original dense greedy vs the lazy greedy (K = N / 3, batch 1, interleaved rounds)",
            "",
            "| N | K | dense ms | lazy ms | speed-up | dense peak MiB | lazy peak MiB | C MiB | same picks |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for x in r["mmtok_before_after"]:
            lines.append(
                f"| {x['n']} | {x['budget']} | {x['dense_ms']:.1f} | {x['lazy_ms']:.1f} | "
                f"{x['dense_ms'] / x['lazy_ms']:.1f}x | {x['dense_peak_mib']:.1f} | {x['lazy_peak_mib']:.1f} | "
                f"{x['coverage_mib']:.1f} | {x['same_picks']} |"
            )
    bw = r["bandwidth"]
    best = max(bw["copy_gbs"], bw["gemv_gbs"])
    lines += [
        "",
        f"## The matrix-vector lower bound of a pointer step (N = {r['plan']['pointer_n']}, batch 1)",
        "",
        f"Memory bandwidth: copy {bw['copy_gbs']:.1f} GB/s (read + write of {bw['bytes'] / 2**20:.0f} MiB), fp32 "
        f"matrix-vector product {bw['gemv_gbs']:.1f} GB/s (the matrix read); the bound takes the larger, "
        f"{best:.1f} GB/s. A step must read the decoder weights it applies and M's cross-attention keys/values "
        "and pointer keys; *measured*: the fast loop's cost per extra step between the two budgets of the "
        "before/after table (batch 1), so the encoder and the once-per-image projections cancel.",
        "",
        "| d_model | weights MiB | memory MiB | bound ms (weights) | bound ms (all) | measured ms/step | x bound |",
        "|---|---|---|---|---|---|---|",
    ]
    measured = _per_step_ms(r)
    for d, sizes in r["step_bytes"].items():
        weights_ms = sizes["weights"] / best / 1e6
        total_ms = (sizes["weights"] + sizes["memory"]) / best / 1e6
        m = measured if int(d) == r["widths"]["d_vision"] else None
        lines.append(
            f"| {d} | {sizes['weights'] / 2**20:.1f} | {sizes['memory'] / 2**20:.1f} | {weights_ms:.2f} | "
            f"{total_ms:.2f} | {_f(m, 2)} | {_f(None if m is None else m / total_ms, 2)} |"
        )
    return lines


def _per_step_ms(r: dict) -> float | None:
    rows = sorted((x for x in r["pointer_before_after"] if x["batch"] == 1), key=lambda x: x["budget"])
    if len(rows) < 2:
        return None
    return (rows[-1]["fast_ms"] - rows[0]["fast_ms"]) / (rows[-1]["budget"] - rows[0]["budget"])


def curve_groups(rows: list[dict], batch: int) -> dict[str, list[str]]:
    """Methods whose time curves at this batch are identical at every (N, fraction), merged under one label:
    e.g. FastV, DART and SparseVLM drop at the same layer, so their extra full-length layers are one curve."""
    by_curve: dict[tuple, list[str]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["batch"] == batch and r["method"] == method]
        key = tuple(sorted((r["n"], r["fraction"], _time(r)) for r in mine))
        if any(t for *_, t in key):
            by_curve.setdefault(key, []).append(method)
    return {" = ".join(ms): ms for ms in by_curve.values()}


def figure(report: dict) -> Figure:
    """Log-log selection time against N, one panel per batch: a line per method (solid: the smaller budget fraction,
    dashed: the larger), each with its own colour and marker (tab20), coinciding curves merged into one legend
    entry, the pruned prefill in thick black."""
    rows = report["rows"]
    batches = sorted({r["batch"] for r in rows})
    fractions = sorted({r["fraction"] for r in rows})
    ns = sorted({r["n"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    palette = colormaps["tab20"].colors
    colours = {m: palette[2 * i if i < 10 else 2 * (i - 10) % 20 + 1] for i, m in enumerate(methods)}  # dark; light
    markers = {m: "osD^v<>pPX*h"[i % 12] for i, m in enumerate(methods)}
    fig = Figure(figsize=(7.5 * len(batches), 5.5), layout="constrained")
    for i, batch in enumerate(batches):
        ax = fig.add_subplot(1, len(batches), i + 1)
        for label, group in curve_groups(rows, batch).items():
            method = group[0]
            for j, fraction in enumerate(fractions):
                points = sorted(
                    (r["n"], _time(r))
                    for r in rows
                    if r["batch"] == batch and r["fraction"] == fraction and r["method"] == method and _time(r)
                )
                if points:
                    ax.plot(*zip(*points, strict=True), "-" if j == 0 else "--", marker=markers[method], ms=4,
                            color=colours[method], label=label if j == 0 else None)  # fmt: skip
        for j, fraction in enumerate(fractions):
            here = [r for r in rows if r["batch"] == batch and r["fraction"] == fraction]
            prefill = sorted({(r["n"], r["prefill_ms"]) for r in here if r["prefill_ms"]})
            if prefill:
                ax.plot(*zip(*prefill, strict=True), "-" if j == 0 else "--", color="black", lw=2.5,
                        label="pruned prefill" if j == 0 else None)  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.xaxis.set_minor_formatter(NullFormatter())  # the N measured, not 3x10^2 beside 4x10^2
        ax.set_xlabel("visual tokens N")
        ax.set_ylabel("ms (in-LLM: extra full-length layers)")
        ax.set_title(f"batch {batch}; solid K = {fractions[0]:.1%} of N, dashed {fractions[-1]:.1%}")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def print_summary(report: dict) -> None:
    """The growth exponents as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"selection time growth ({report['device']})")
    for column in ("method", "batch", "a (in N)", "b (in K)"):
        table.add_column(column, justify="right")
    for (method, batch), e in exponents(report["rows"]).items():
        table.add_row(method, str(batch), _f(e["n"], 2), _f(e["k"], 2))
    Console().print(table)


__all__: list[Any] = ["curve_groups", "exponents", "figure", "markdown", "print_summary"]
