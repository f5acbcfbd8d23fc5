"""The 95 % intervals of a world report: each row's accuracy and retention, and its paired difference to a reference.

    from steprune.eval.world_compare import add_intervals, ensure_intervals

    add_intervals(report)                          # reference: the best baseline at each budget
    add_intervals(report, reference="steprune")    # every row against StepPrune
    report["rows"][2]["retention_ci"], report["rows"][2]["diff_retention_ci"], report["intervals"]["references"]

Works on any report of `evaluate_world` (or several merged, as `make train` does): rows carry `correct`, the
per-question 0/1 vector on the same questions in the same order. The unpruned model's vector is the `vanilla`
row's (else `report["vanilla_correct"]`); retention intervals resample it jointly with the method's
(`steprune.eval.intervals`). Rows are compared within their *comparison budget*: the budget, the target K of
an equal-FLOPs row, or (StepPrune run as "adaptive") its mean K rounded. The reference of a budget is the
named method's row there (its only row, when it has one: an adaptive method), or, by default, the most accurate
baseline (not vanilla, not StepPrune). Every other row of that budget gets its difference to it, A - reference,
in accuracy (`diff_accuracy*`) and in retention (`diff_retention*`), both as fractions. Rows are changed in
place; `ensure_intervals` recomputes only when the rows changed since (a merge), with the same settings.
"""

from __future__ import annotations

from typing import Any

from steprune.eval.intervals import CONFIDENCE, RESAMPLES, accuracy_interval, paired_difference

NOT_BASELINES = frozenset({"vanilla", "steprune"})


def comparison_budget(row: dict[str, Any]) -> int | None:
    """The budget a row is compared at (None: the unpruned model)."""
    if row["method"] == "vanilla":
        return None
    if row.get("flops_match"):
        return int(row["flops_match"]["target_budget"])
    budget = row["budget"]
    return budget if isinstance(budget, int) else max(1, round(row["k_mean"]))


def row_key(row: dict[str, Any]) -> str:
    """A row's name in references: `method@budget`, `method@budget~K` for an equal-FLOPs row."""
    match = row.get("flops_match")
    return f"{row['method']}@{row['budget']}" + (f"~{match['target_budget']}" if match else "")


def references(rows: list[dict[str, Any]], reference: str | None = None) -> dict[int, int]:
    """Comparison budget -> index of its reference row (budgets without a candidate are left out)."""
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        budget = comparison_budget(row)
        if budget is not None and "correct" in row:
            groups.setdefault(budget, []).append(i)
    chosen: dict[int, int] = {}
    named = [i for i, row in enumerate(rows) if row["method"] == reference and "correct" in row]
    for budget, members in groups.items():
        if reference is None:
            candidates = [i for i in members if rows[i]["method"] not in NOT_BASELINES]
            if candidates:  # the most accurate; ties go to the first row
                chosen[budget] = max(candidates, key=lambda i: (rows[i]["overall"], -i))
        else:
            here = [i for i in members if rows[i]["method"] == reference]
            if here or len(named) == 1:
                chosen[budget] = (here or named)[0]
    return chosen


def _key(report: dict[str, Any]) -> list[str]:
    return [row_key(r) for r in report["rows"]]


def add_intervals(report: dict[str, Any], reference: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Fill `acc_ci`, `retention_ci` and the paired differences of every row of `report`, in place."""
    rows = report["rows"]
    vanilla = next((r["correct"] for r in rows if r["method"] == "vanilla" and "correct" in r), None)
    vanilla = vanilla if vanilla is not None else report.get("vanilla_correct")
    for row in rows:
        if "correct" not in row:
            continue
        if vanilla is not None:
            assert len(vanilla) == len(row["correct"]), "rows must share the questions of the unpruned model"
        accuracy, retention = accuracy_interval(row["correct"], vanilla, seed)
        row["acc_ci"] = accuracy.as_list()
        row["retention_ci"] = retention.as_list() if retention is not None else None
        for field in ("reference", "diff_accuracy", "diff_accuracy_ci", "diff_retention", "diff_retention_ci"):
            row[field] = None
    chosen = references(rows, reference)
    for i, row in enumerate(rows):
        budget = comparison_budget(row)
        if budget not in chosen or chosen[budget] == i or "correct" not in row:
            continue
        ref = rows[chosen[budget]]
        difference = paired_difference(row["correct"], ref["correct"], None, seed)
        row.update(reference=row_key(ref), diff_accuracy=difference.point, diff_accuracy_ci=difference.as_list())
        if vanilla is not None:
            difference = paired_difference(row["correct"], ref["correct"], vanilla, seed)
            row.update(diff_retention=difference.point, diff_retention_ci=difference.as_list())
    report["intervals"] = {
        "confidence": CONFIDENCE,
        "method": "BCa, paired over questions",
        "resamples": RESAMPLES,
        "seed": seed,
        "reference": reference,
        "references": {str(b): row_key(rows[i]) for b, i in sorted(chosen.items())},
        "rows": _key(report),
    }
    return report


def ensure_intervals(report: dict[str, Any]) -> dict[str, Any]:
    """`add_intervals` with the report's own settings, unless they were computed on exactly these rows."""
    settings = report.get("intervals") or {}
    if settings.get("rows") != _key(report):
        add_intervals(report, settings.get("reference"), settings.get("seed", 0))
    return report
