"""Trained StepPrune selectors against a world report's baselines, at equal mean K and at equal prefill FLOPs.

    steprune eval --suite world --budgets 4,8,16,32,48 --match flops --limit 2000 --out reports/world_eval
    python -m steprune.eval.selector_study --baselines reports/world_eval.json \
        --selector removal-k16-s0=runs/k16_s0/selector.safetensors \
        --selector paper-k16-s0=runs/p16_s0/selector.safetensors \
        --out reports/stepprune_study

Each selector runs on exactly the questions of the baselines' report (same split, limit and seed), with the
report's unpruned model as the retention reference, so every difference is paired per question. A selector is
compared at its comparison budget (its mean K rounded, `steprune.eval.world_compare`):
- at equal K: the most accurate baseline run at that budget (any method, pre-LLM or in-LLM); where the report has
  no run at that budget, at the smallest budget above the mean K (the baseline keeps more tokens; `rule` says so,
  and the table marks it "≥K");
- at equal FLOPs: the most accurate baseline row, at any budget, whose prefill FLOPs (vision, projector, the
  method's own selection, LLM; in-LLM methods through their drop stages) do not exceed the selector's own —
  its selection cost included, so a selector that costs more than the methods at its K meets them at a larger K
  (the report's `--match flops` rows give the in-LLM methods budgets between the token counts).
Both differences carry 95 % paired-bootstrap intervals in retention points (`--figure`: every method's retention
against prefill FLOPs with the selectors as stars, one line per surrogate). Selectors are grouped by
(surrogate, calibrated target K) — a selector with the coverage prior is its own surrogate, "removal+coverage" —
and each group gets mean ± std over its seeds. Per selector: K range,
max/min, Spearman rho(K, objects), and accuracy per K bucket (`steprune.eval.k_buckets`). Writes
OUT.json and OUT.md, headed by the base they were measured on; baselines measured on another base than the one
at their backbone path now (rebuilt since) are refused.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steprune.eval.base_label import base_line, check_same_base
from steprune.eval.intervals import paired_difference
from steprune.eval.k_buckets import bucket_spread, k_bucket_accuracy, k_bucket_markdown
from steprune.eval.world_compare import add_intervals, comparison_budget, row_key
from steprune.eval.world_tables import with_interval
from steprune.pruners import PRUNERS

NOT_BASELINES = frozenset({"vanilla", "steprune", "identity"})


def parse_selector(spec: str) -> tuple[str, str]:
    """`NAME=PATH` -> (name, path); a bare path is named by its parent directory."""
    name, sep, path = spec.partition("=")
    if not sep:
        path, name = spec, Path(spec).parent.name or Path(spec).stem
    if not Path(path).is_file():
        raise FileNotFoundError(f"--selector {spec!r}: no selector file at {path!r} (train one with make train)")
    return name, path


def surrogate_label(config: dict[str, Any]) -> str:
    """The surrogate a selector trained with, "+coverage" when its pointer reads the coverage prior (its own group
    and line: `steprune.selector.coverage_prior`), "+coverage-absolute" with that prior's absolute-gain STOP."""
    surrogate = config.get("surrogate", "paper")
    if config.get("prior", "none") != "coverage":
        return surrogate
    stop = config.get("prior_stop", "saturation")
    return f"{surrogate}+coverage" + ("" if stop == "saturation" else f"-{stop}")


def selector_facts(path: str) -> dict[str, Any]:
    """Surrogate, floor, T_max and calibration of an exported selector."""
    from steprune.selector.selector import StepPruneSelector

    selector = StepPruneSelector.load(path)
    calibration = selector.calibration or {}
    return {
        "surrogate": surrogate_label(selector.config),
        "min_k": selector.config.get("min_k"),
        "t_max": selector.config.get("t_max"),
        "stop_offset": selector.config.get("stop_offset", 0.0),
        "target_k": calibration.get("target_k"),
        "calibration": selector.calibration,
    }


def best_at_k(rows: Sequence[dict[str, Any]], budget: int) -> dict[str, Any] | None:
    """The most accurate baseline row run at `budget` (any method, pre-LLM or in-LLM)."""
    candidates = [
        r
        for r in rows
        if r["method"] not in NOT_BASELINES
        and "correct" in r
        and comparison_budget(r) == budget
        and (not r.get("flops_match") or r["budget"] == budget)
    ]
    return max(candidates, key=lambda r: r["overall"]) if candidates else None


def best_at_next_budget(rows: Sequence[dict[str, Any]], k_mean: float) -> dict[str, Any] | None:
    """Where no baseline ran at the selector's rounded K: the most accurate baseline at the smallest report budget
    above its mean K. The baseline keeps more tokens, so the comparison leans towards it (a selector level with it
    is at least level at equal K)."""
    budgets = sorted({r["budget"] for r in rows if r["method"] not in NOT_BASELINES and isinstance(r["budget"], int)})
    above = [b for b in budgets if b >= k_mean]
    return best_at_k(rows, above[0]) if above else None


def best_at_cost(rows: Sequence[dict[str, Any]], tflops: float) -> dict[str, Any] | None:
    """The most accurate baseline row whose prefill FLOPs (selection included) do not exceed `tflops`: whatever
    the budget, so a selector that costs more than the methods at its K meets them at a larger K."""
    candidates = [
        r
        for r in rows
        if r["method"] not in NOT_BASELINES and "correct" in r and r["prefill_tflops"] <= tflops * (1 + 1e-9)
    ]
    return max(candidates, key=lambda r: r["overall"]) if candidates else None


def compare_to(row: dict[str, Any], reference: dict[str, Any] | None, unpruned: Sequence[int]) -> dict[str, Any]:
    if reference is None:
        return {"reference": None}
    difference = paired_difference(row["correct"], reference["correct"], unpruned)
    return {
        "reference": row_key(reference),
        "reference_retention": reference["retention"],
        "diff_retention": difference.point,
        "diff_retention_ci": difference.as_list(),
    }


def equal_k_comparison(
    row: dict[str, Any], rows: Sequence[dict[str, Any]], budget: int, unpruned: Sequence[int]
) -> dict[str, Any]:
    """The equal-K comparison: at the rounded mean K, else at the next report budget up (`rule` says which)."""
    exact = best_at_k(rows, budget)
    if exact is not None:
        return {**compare_to(row, exact, unpruned), "rule": "rounded K"}
    above = best_at_next_budget(rows, row["k_mean"])
    return {**compare_to(row, above, unpruned), "rule": "next budget up" if above is not None else None}


def study(baselines: dict[str, Any], selectors: Sequence[tuple[str, str]], batch_size: int = 64) -> dict[str, Any]:
    """Run every selector on the baselines' questions; return the merged report with one summary per selector."""
    from steprune.eval.world_eval import evaluate_world

    vanilla = next((r for r in baselines["rows"] if r["method"] == "vanilla"), None)
    unpruned = vanilla["correct"] if vanilla else baselines.get("vanilla_correct")
    if unpruned is None:
        raise ValueError("the baselines' report has no unpruned row (vanilla) to measure retention against")
    check_same_base(baselines.get("base"), baselines["backbone"])
    rows = [r for r in baselines["rows"] if r["method"] != "steprune"]
    summaries = []
    for name, path in selectors:
        learned = evaluate_world(
            baselines["backbone"],
            ["steprune"],
            [1],
            split=baselines["split"],
            limit=baselines["limit"],
            batch_size=batch_size,
            seed=baselines["seed"],
            weights=path,
            include_vanilla=False,
            vanilla_correct=unpruned,
        )
        facts = selector_facts(path)
        series = f"steprune ({facts['surrogate']})"  # one line per surrogate in the figure
        row = {**learned["rows"][0], "budget": "adaptive", "variant": name, "selector": path, "series": series}
        rows.append(row)
        budget = comparison_budget(row)
        buckets = k_bucket_accuracy(row["k_per_question"], row["correct"], unpruned)
        summaries.append(
            {
                "name": name,
                "selector": path,
                **facts,
                "k_mean": row["k_mean"],
                "k_min": row["k_min"],
                "k_max": row["k_max"],
                "k_max_over_min": row["k_max"] / row["k_min"] if row["k_min"] > 0 else float("inf"),
                "spearman_k_objects": row["k_spearman_objects"],
                "budget": budget,
                "retention": row["retention"],
                "prefill_tflops": row["prefill_tflops"],
                "equal_k": equal_k_comparison(row, rows, budget, unpruned),
                "equal_flops": compare_to(row, best_at_cost(rows, row["prefill_tflops"]), unpruned),
                "k_buckets": buckets,
                "bucket_spread_retention": bucket_spread(buckets),
                "bucket_spread_accuracy": bucket_spread(buckets, "accuracy"),
            }
        )
    report = {**baselines, "rows": rows, "selectors": summaries}
    add_intervals(report)
    for summary, row in zip(summaries, rows[-len(summaries) :] if summaries else [], strict=True):
        summary["retention_ci"] = row["retention_ci"]
    report["groups"] = groups(summaries)
    return report


def groups(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (surrogate, target K)."""
    keyed: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for s in summaries:
        keyed.setdefault((s["surrogate"], s["target_k"]), []).append(s)

    def mean_std(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    out = []
    for (surrogate, target), members in sorted(keyed.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        entry: dict[str, Any] = {"surrogate": surrogate, "target_k": target, "seeds": len(members)}
        for field, values in (
            ("k_mean", [m["k_mean"] for m in members]),
            ("retention", [m["retention"] for m in members]),
            ("spearman_k_objects", [m["spearman_k_objects"] for m in members]),
            ("diff_equal_k", [m["equal_k"].get("diff_retention") for m in members]),
            ("diff_equal_flops", [m["equal_flops"].get("diff_retention") for m in members]),
        ):
            if all(v is not None for v in values):
                entry[field], entry[field + "_std"] = mean_std(values)
        out.append(entry)
    return out


def _difference(side: dict[str, Any]) -> str:
    if not side.get("reference"):
        return "n/a"
    cell = with_interval(side["diff_retention"], side["diff_retention_ci"], signed=True)
    mark = " ≥K" if side.get("rule") == "next budget up" else ""
    return f"{side['reference']}{mark} ({100 * side['reference_retention']:.1f}): {cell}"


def markdown(report: dict[str, Any]) -> str:
    """One row per selector, one per (surrogate, target) group, then each selector's K buckets."""
    head = base_line(report.get("base")) + (
        f"**built-in world, {report['split']} split: {report['questions']} questions, {report['visual_tokens']} "
        "visual tokens; 95 % paired-bootstrap intervals over questions, differences in retention points**\n"
    )
    lines = [
        head,
        "| selector | surrogate | target K | K mean (min-max) | rho(K, objects) | retention % [95% CI] "
        "| Δ vs best at equal K | Δ vs best at equal FLOPs | bucket spread (ret.) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["selectors"]:
        lines.append(
            f"| {s['name']} | {s['surrogate']} | {s['target_k'] if s['target_k'] is not None else '-'} | "
            f"{s['k_mean']:.1f} ({s['k_min']}-{s['k_max']}) | {s['spearman_k_objects']:.2f} | "
            f"{with_interval(s['retention'], s.get('retention_ci'))} | {_difference(s['equal_k'])} | "
            f"{_difference(s['equal_flops'])} | {100 * s['bucket_spread_retention']:.1f} |"
        )
    lines += [
        "",
        "| surrogate | target K | seeds | K mean | retention % (mean ± std) | Δ equal K | Δ equal FLOPs | rho |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def pm(entry: dict[str, Any], field: str, signed: bool = False) -> str:
        if field not in entry:
            return "n/a"
        fmt = "{:+.1f}" if signed else "{:.1f}"
        return f"{fmt.format(100 * entry[field])} ± {100 * entry[field + '_std']:.1f}"

    for g in report["groups"]:
        lines.append(
            f"| {g['surrogate']} | {g['target_k'] if g['target_k'] is not None else '-'} | {g['seeds']} | "
            f"{g['k_mean']:.1f} | {pm(g, 'retention')} | {pm(g, 'diff_equal_k', True)} | "
            f"{pm(g, 'diff_equal_flops', True)} | {g['spearman_k_objects']:.2f} |"
        )
    for s in report["selectors"]:
        lines += ["", f"Accuracy per K bucket, {s['name']}:", "", k_bucket_markdown(s["k_buckets"])]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baselines", required=True, help="a world report JSON (steprune eval --suite world)")
    parser.add_argument("--selector", action="append", required=True, help="NAME=PATH of a .safetensors, repeatable")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="reports/stepprune_study")
    parser.add_argument("--figure", default=None, help="retention vs prefill FLOPs with the selectors (.png)")
    args = parser.parse_args(argv)
    baselines_path = Path(args.baselines)
    if not baselines_path.is_file():
        parser.error(f"--baselines: no report at {baselines_path} (make one with steprune eval --suite world)")
    selectors = [parse_selector(spec) for spec in args.selector]
    baselines = json.loads(baselines_path.read_text())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    PRUNERS.get("steprune")
    try:
        report = study(baselines, selectors, args.batch_size)
    except ValueError as error:
        parser.error(f"--baselines: {error}")
    report["baselines_report"] = str(baselines_path)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    if args.figure:
        from steprune.eval.figures import retention_vs_flops

        title = f"built-in world, {report['questions']} {report['split']} questions: StepPrune and every baseline"
        retention_vs_flops(report["rows"], title).savefig(args.figure, dpi=120)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
