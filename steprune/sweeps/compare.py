"""`steprune runs`: the comparison a researcher opens MLflow for, printed from MLflow's API (the prepared view).

    steprune runs --experiment ablation_table4                  # one row per run, then mean ± std per variant
    steprune runs --experiment sweeps --parent <run id> --metric final/retention --metric final/k_mean
    python -m steprune.sweeps.compare --experiment stepprune --group-by model.surrogate

MLflow keeps no saved views on the server (the UI remembers its columns in the browser), so the view is this
command; the README says which columns to pick and to group by `variant` in the UI for the same table.
Rows: the experiment's runs (any status: it is a column) except sweep / grid parents. Columns: the tags `variant`
and `git_commit`, the run's seed (`seed_everything`), every param whose value differs between the runs (a sweep's
or a variant's real option names, `temperature.end`, `model.lam`, ...; a bare hparam `lam` is left out when
`model.lam` is there), and the `final/*` and `test/*` metrics (or those given). Groups: mean ± sample std over the
runs of each group.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient

from steprune.sweeps.tracking import tracking_uri
from steprune.training.tracking_store import prepare_tracking_store

SHOWN_TAGS = ("variant", "git_commit")
METRIC_PREFIXES = ("final/", "test/")
SEED = "seed_everything"
"""The run's seed param (the param `seed` is the data module's data seed)."""


@dataclass(frozen=True)
class Comparison:
    columns: list[str]  # tag, param and metric names, in order
    rows: list[dict[str, Any]]  # one per run: "run" (its name), "status", then the columns
    groups: list[dict[str, Any]]  # one per group value: "group", "runs", then "<metric>" -> (mean, std)
    metrics: list[str]


def _varying_params(runs: Sequence[Any]) -> list[str]:
    names = sorted({name for run in runs for name in run.data.params})
    varying = [n for n in names if len({run.data.params.get(n) for run in runs}) > 1 and n != SEED]
    qualified = {n.split(".", 1)[1] for n in varying if "." in n}
    return [n for n in varying if "." in n or n not in qualified]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one run)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compare(
    client: MlflowClient,
    experiment: str,
    parent: str | None = None,
    metrics: Sequence[str] = (),
    group_by: str = "variant",
) -> Comparison:
    """The comparison table of `experiment`'s runs (under `parent` when given); see the module docstring."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "(none)"
        raise ValueError(f"no MLflow experiment {experiment!r} in {client.tracking_uri}; it has: {names}")
    query = f"tags.`mlflow.parentRunId` = '{parent}'" if parent else ""
    runs = [
        r
        for r in client.search_runs([found.experiment_id], query, max_results=5000, order_by=["attributes.start_time"])
        if r.data.tags.get("sweep.role") != "parent"
    ]
    if not metrics:
        metrics = sorted({m for r in runs for m in r.data.metrics if m.startswith(METRIC_PREFIXES)})
    params = [SEED, *_varying_params(runs)]
    columns = [*SHOWN_TAGS, *params, *metrics]
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.info.run_name, "status": run.info.status}
        row.update({tag: run.data.tags.get(tag) for tag in SHOWN_TAGS})
        row.update({name: run.data.params.get(name) for name in params})
        row[SEED] = row[SEED] if row[SEED] is not None else run.data.tags.get("seed")  # runs made before it was a param
        row.update({name: run.data.metrics.get(name) for name in metrics})
        row[group_by] = row.get(group_by) or run.data.tags.get(group_by) or run.data.params.get(group_by)
        rows.append(row)
    groups = []
    for value in dict.fromkeys(row[group_by] for row in rows):
        members = [row for row in rows if row[group_by] == value]
        group: dict[str, Any] = {"group": value, "runs": len(members)}
        for name in metrics:
            values = [row[name] for row in members if row[name] is not None]
            group[name] = _mean_std(values) if values else None
        groups.append(group)
    return Comparison(columns, rows, groups, list(metrics))


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if column == "git_commit" and len(str(value)) >= 40:  # <sha> or <sha>-dirty: the short form
        return str(value)[:10] + str(value)[40:]
    return str(value)


def print_comparison(comparison: Comparison, group_by: str, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 240)  # piped: no column is cut to a few letters
    runs = Table(title=f"{title}: {len(comparison.rows)} runs")
    for column in ("run", "status", *comparison.columns):
        runs.add_column(column)
    for row in comparison.rows:
        runs.add_row(*(_cell(row.get(c), c) for c in ("run", "status", *comparison.columns)))
    console.print(runs)
    grouped = Table(title=f"{title}: mean ± std by {group_by}")
    for column in (group_by, "runs", *comparison.metrics):
        grouped.add_column(column)
    for group in comparison.groups:
        stats = [f"{m[0]:.4g} ± {m[1]:.2g}" if m else "-" for m in (group[name] for name in comparison.metrics)]
        grouped.add_row(_cell(group["group"]), str(group["runs"]), *stats)
    console.print(grouped)


def compare_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="steprune runs", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="the MLflow experiment (a sweep's or grid's `mlflow`)")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db")
    parser.add_argument("--parent", default=None, help="only the runs nested under this parent run id")
    parser.add_argument("--metric", action="append", default=[], help="a metric column (repeat); default final/*")
    parser.add_argument("--group-by", default="variant", help="tag or param to group by (default: variant)")
    args = parser.parse_args(argv)
    client = MlflowClient(prepare_tracking_store(tracking_uri(args.tracking_uri)))
    try:
        comparison = compare(client, args.experiment, args.parent, args.metric, args.group_by)
    except ValueError as error:
        parser.error(str(error))
    print_comparison(comparison, args.group_by, args.experiment)
    return 0


if __name__ == "__main__":
    raise SystemExit(compare_main())
