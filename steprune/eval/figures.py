"""Figures of the eval reports: retention against prefill FLOPs, every method with its 95 % intervals.

    steprune eval --suite world --budgets 4,8,16,32,48 --figure reports/world_pareto.png
    fig = retention_vs_flops(report["rows"], title="built-in world, 500 test questions")
    fig.savefig("reports/world_pareto.png")

One line per method through its budgets (x: prefill TFLOPs per question, selection included; y: retention,
error bars: its 95 % bootstrap interval), equal-FLOPs rows of in-LLM methods drawn hollow on their method's
line, StepPrune (adaptive: one point per distinct mean K) as a star, the unpruned model as a dashed line at
100 %. Built on `matplotlib.figure.Figure` directly (no pyplot, no global backend state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib
from matplotlib.figure import Figure


def _error(row: dict[str, Any]) -> tuple[float, float]:
    """(below, above) the retention in percent; 0 where the interval is missing or undefined."""
    interval, point = row.get("retention_ci"), row["retention"]
    if not interval or not all(math.isfinite(v) for v in (*interval, point)):
        return 0.0, 0.0
    return max(0.0, 100 * (point - interval[0])), max(0.0, 100 * (interval[1] - point))


def _series(row: dict[str, Any]) -> str:
    """The line a row belongs to: its method, or e.g. "steprune (removal)" when a study names the series."""
    return row.get("series") or row["method"]


def retention_vs_flops(rows: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """Retention (%) with 95 % error bars against prefill TFLOPs, one series per method (see the module doc)."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(_series(r) for r in rows if r["method"] != "vanilla"))
    tab20 = matplotlib.colormaps["tab20"]  # the ten dark hues first, then their light shades
    colours = {m: tab20((2 * i) % 20 + (i // 10) % 2) for i, m in enumerate(methods)}
    for method in methods:
        series = sorted((r for r in rows if _series(r) == method), key=lambda r: r["prefill_tflops"])
        if method.startswith("steprune"):
            series = list({round(r["k_mean"], 3): r for r in series}.values())  # its K does not follow the budget
        x = [r["prefill_tflops"] for r in series]
        y = [100 * r["retention"] for r in series]
        below, above = zip(*(_error(r) for r in series), strict=True)
        star = method.startswith("steprune")
        ax.errorbar(x, y, yerr=[below, above], fmt="*-" if star else "o-", ms=11 if star else 5, capsize=3,
                    c=colours[method], label=method, zorder=3 if star else 2)  # fmt: skip
        matched = [(xi, yi) for xi, yi, r in zip(x, y, series, strict=True) if r.get("flops_match")]
        if matched:
            ax.scatter(*zip(*matched, strict=True), s=60, facecolors="white", edgecolors=colours[method], zorder=4)
    vanilla = next((r for r in rows if r["method"] == "vanilla"), None)
    if vanilla is not None:
        ax.axhline(100, c="k", ls="--", lw=0.8, label=f"unpruned ({vanilla['prefill_tflops']:.3g} TFLOPs)")
    ax.set_xlabel("prefill TFLOPs per question (vision + projector + selection + LLM)")
    ax.set_ylabel("retention (% of unpruned accuracy), 95% CI")
    ax.set_title(title or "retention vs prefill FLOPs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    return fig
