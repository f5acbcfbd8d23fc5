"""The tables of a world report (`evaluate_world`): Markdown for reports/, rich for the terminal.

    from steprune.eval.world_tables import markdown, print_table
    Path("reports/world_eval.md").write_text(markdown(report))
    print_table(report)

Both show, per method x budget: K, accuracy per question kind, overall accuracy and retention with their 95 %
intervals ("93.1 [90.2, 95.8]"), the paired difference in retention points to the budget's reference
("+1.2 [-0.8, 3.1]", "ref" on the reference itself) and the prefill TFLOPs; the title says how many test
questions the intervals rest on. An equal-FLOPs row's budget reads "9 (FLOPs of 16)". Both first make sure the
intervals fit the rows (`ensure_intervals`: a merged report gets them recomputed, in place). The Markdown
starts with the base the report was measured on (`steprune.eval.base_label`).
"""

from __future__ import annotations

import math
from typing import Any

from steprune.eval.base_label import base_line
from steprune.eval.world_compare import ensure_intervals, row_key

COLUMNS = ("method", "budget", "K mean (min-max)", "overall [95% CI]", "retention % [95% CI]", "Δ ret. vs ref")


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def with_interval(point: float | None, interval: list[float] | None, signed: bool = False) -> str:
    """`point` and its interval in percent: "93.1 [90.2, 95.8]" (signed: "+1.2 [-0.8, +3.1]")."""
    if point is None or not _finite(point):
        return "n/a"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    text = fmt.format(100 * point)
    if interval is not None and _finite(*interval):
        text += " [" + ", ".join(fmt.format(100 * v) for v in interval) + "]"
    return text


def budget_cell(row: dict[str, Any]) -> str:
    match = row.get("flops_match")
    budget = "-" if row["budget"] is None else str(row["budget"])
    return f"{budget} (FLOPs of {match['target_budget']})" if match else budget


def difference_cell(row: dict[str, Any], report: dict[str, Any]) -> str:
    if row_key(row) in report.get("intervals", {}).get("references", {}).values():
        return "ref"
    if not row.get("reference"):
        return "-"
    return with_interval(row.get("diff_retention"), row.get("diff_retention_ci"), signed=True)


def cells(row: dict[str, Any], kinds: list[str], report: dict[str, Any]) -> list[str]:
    return [
        row["method"],
        budget_cell(row),
        f"{row['k_mean']:.1f} ({row['k_min']}-{row['k_max']})",
        *[f"{100 * row['per_kind'].get(k, 0):.1f}" for k in kinds],
        with_interval(row["overall"], row.get("acc_ci")),
        with_interval(row.get("retention"), row.get("retention_ci")),
        difference_cell(row, report),
        f"{row['prefill_tflops']:.3g}",
    ]


def title(report: dict[str, Any]) -> str:
    questions = report.get("questions", report["rows"][0].get("count", report["limit"]))
    return (
        f"built-in world, {report['split']} split: {questions} questions, {report['visual_tokens']} visual tokens; "
        "95% paired bootstrap intervals over questions"
    )


def notes(report: dict[str, Any]) -> list[str]:
    """References per budget and the equal-FLOPs matches that could not be reached."""
    settings = report.get("intervals", {})
    refs = settings.get("references", {})
    lines = []
    if refs:
        who = f"`{settings['reference']}`" if settings.get("reference") else "the most accurate baseline"
        lines.append(
            f"Δ ret. vs ref: retention points of the row minus the reference ({who}) at the same budget, paired: "
            + ", ".join(f"K={b}: {ref}" for b, ref in refs.items())
        )
    for match in report.get("flops_matches", []):
        if not match["reachable"]:
            lines.append(
                f"{match['method']} cannot match the prefill FLOPs of {match['target_method']} at K="
                f"{match['target_budget']}: even budget {match['budget']} costs {match['flops'] / 1e12:.3g} TFLOPs "
                f"(target {match['target_flops'] / 1e12:.3g})"
            )
    return lines


def markdown(report: dict[str, Any]) -> str:
    ensure_intervals(report)
    kinds = sorted(report["rows"][0]["per_kind"])
    head = "| " + " | ".join([*COLUMNS[:3], *kinds, *COLUMNS[3:], "TFLOPs"]) + " |"
    lines = [base_line(report.get("base")) + f"**{title(report)}**", "", head, "|" + "---|" * (head.count("|") - 1)]
    lines += ["| " + " | ".join(cells(r, kinds, report)) + " |" for r in report["rows"]]
    extra = notes(report)
    return "\n".join(lines + ([""] + extra if extra else [])) + "\n"


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    ensure_intervals(report)
    kinds = sorted(report["rows"][0]["per_kind"])
    table = Table(title=title(report), caption="\n".join(notes(report)) or None)
    for column in (*COLUMNS[:3], *kinds, *COLUMNS[3:], "TFLOPs"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in report["rows"]:
        table.add_row(*cells(row, kinds, report))
    Console(width=max(Console().width, 180)).print(table)
