"""Figures: retention vs K (Pareto front) of a sweep, K histogram / adaptivity of a run, ablation bars, accuracy
per K bucket (one run, or a grid of them).

    fig = retention_vs_k([(12.0, 0.91, 0), (20.0, 0.97, 1)], title="study x")
    MlflowClient().log_figure(run_id, fig, "figures/retention_vs_k.png")

Built on `matplotlib.figure.Figure` directly (no pyplot, no global backend state).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points when K is minimised and retention maximised, by increasing K."""
    front = []
    for i, (k, r) in enumerate(points):
        dominated = any((k2 <= k and r2 >= r) and (k2 < k or r2 > r) for j, (k2, r2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def retention_vs_k(points: Sequence[tuple[float, float, int]], title: str = "") -> Figure:
    """Scatter of (mean K, retention, trial number) with the Pareto front drawn as a step line."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    if points:
        ks, rs, numbers = zip(*points, strict=True)
        ax.scatter(ks, [100 * r for r in rs], c="tab:blue", alpha=0.6, label="trials")
        for k, r, n in points:
            ax.annotate(str(n), (k, 100 * r), fontsize=7, alpha=0.7, xytext=(3, 3), textcoords="offset points")
        front = pareto_front([(k, r) for k, r, _ in points])
        ax.step([ks[i] for i in front], [100 * rs[i] for i in front], where="post", c="tab:red", label="Pareto front")
        ax.scatter([ks[i] for i in front], [100 * rs[i] for i in front], c="tab:red", zorder=3)
        ax.legend()
    ax.set_xlabel("mean K (visual tokens kept)")
    ax.set_ylabel("retention (%)")
    ax.set_title(title or "retention vs K")
    ax.grid(alpha=0.3)
    return fig


def k_histogram(ks: Sequence[int], title: str = "") -> Figure:
    """Histogram of the per-sample number of kept visual tokens (adaptive K)."""
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    draw_k_histogram(fig.add_subplot(), ks, "samples", title or "K per sample")
    return fig


def draw_k_histogram(ax: Any, ks: Sequence[int], ylabel: str, title: str) -> None:
    """One bar per K value and the mean as a dashed line, on `ax`."""
    if ks:
        lo, hi = min(ks), max(ks)
        ax.hist(ks, bins=range(lo, hi + 2), align="left", color="tab:green", edgecolor="white")
        ax.axvline(sum(ks) / len(ks), c="k", ls="--", label=f"mean {sum(ks) / len(ks):.1f}")
        ax.legend()
    ax.set_xlabel("K (visual tokens kept)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def adaptivity(histogram: Sequence[int], by_objects: dict[str, dict[str, float]], title: str = "") -> Figure:
    """Two panels: the K histogram (counts per K) and mean / min-max K against the number of objects."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    ks = [k for k, count in enumerate(histogram) for _ in range(count)]
    draw_k_histogram(left, ks, "test questions", "K per question")
    counts = sorted(by_objects, key=int)
    if counts:
        x = [int(c) for c in counts]
        mean = [by_objects[c]["k_mean"] for c in counts]
        low = [by_objects[c]["k_mean"] - by_objects[c]["k_min"] for c in counts]
        high = [by_objects[c]["k_max"] - by_objects[c]["k_mean"] for c in counts]
        right.errorbar(x, mean, yerr=[low, high], fmt="o-", capsize=4, c="tab:blue", label="mean (min-max)")
        right.legend()
    right.set_xlabel("objects in the scene")
    right.set_ylabel("K")
    right.set_title("K against scene complexity")
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def ablation_bars(rows: Sequence[dict], title: str = "") -> Figure:
    """Mean ± std retention per variant (bars) with mean K annotated."""
    fig = Figure(figsize=(max(5, 1.1 * len(rows)), 4), layout="constrained")
    ax = fig.add_subplot()
    names = [r["variant"] for r in rows]
    means = [100 * r["retention_mean"] for r in rows]
    stds = [100 * r["retention_std"] for r in rows]
    bars = ax.bar(names, means, yerr=stds, capsize=4, color="tab:purple", alpha=0.8)
    for bar, r in zip(bars, rows, strict=True):
        ax.annotate(f"K={r['k_mean']:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")  # fmt: skip
    ax.set_ylabel("retention (%)")
    ax.set_title(title or "ablation")
    ax.tick_params(axis="x", labelrotation=30)
    return fig


def k_buckets(rows: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """Accuracy per K bucket (the paper's Fig. 4) with 95 % intervals, beside the unpruned model on the same
    questions; rows from `steprune.eval.k_buckets.k_bucket_accuracy`."""
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    draw_k_buckets(fig.add_subplot(), rows, title or "accuracy per K bucket")
    return fig


def k_buckets_grid(panels: Sequence[tuple[str, Sequence[dict[str, Any]]]], title: str = "") -> Figure:
    """One `k_buckets` panel per (name, rows), side by side in rows of three (e.g. the seeds of a rate)."""
    if not panels:
        raise ValueError("k_buckets_grid needs at least one (name, rows) panel")
    cols = min(3, len(panels))
    grid_rows = -(-len(panels) // cols)
    fig = Figure(figsize=(5.0 * cols, 3.6 * grid_rows), layout="constrained")
    axes = fig.subplots(grid_rows, cols, squeeze=False, sharey=True)
    for ax, (name, rows) in zip(axes.flat, panels, strict=False):
        draw_k_buckets(ax, rows, name)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def draw_k_buckets(ax: Any, rows: Sequence[dict[str, Any]], title: str) -> None:
    """Bars of accuracy per K bucket with their intervals, the unpruned accuracy as a black tick, on `ax`."""
    labels = [f"{r['k_low']}-{r['k_high']}\n(n={r['n']})" for r in rows]
    x = list(range(len(rows)))
    acc = [100 * r["accuracy"] for r in rows]
    ci = [r["accuracy_ci"] or [r["accuracy"]] * 2 for r in rows]  # a one-question bucket has no interval
    low = [a - 100 * c[0] for a, c in zip(acc, ci, strict=True)]
    high = [100 * c[1] - a for a, c in zip(acc, ci, strict=True)]
    ax.bar(x, acc, yerr=[low, high], capsize=4, color="tab:blue", alpha=0.8, label="pruned")
    ax.scatter(x, [100 * r["unpruned_accuracy"] for r in rows], c="k", marker="_", s=400, zorder=3,
               label="unpruned, same questions")  # fmt: skip
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel("K bucket (visual tokens kept)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3, axis="y")
