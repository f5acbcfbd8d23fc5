"""`steprune ablate` / `make ablate`: the paper's Table 4 grid over seeds, tracked in MLflow, summarised as a table.

    steprune ablate --config sweeps/ablation_table4.yaml                     # every variant x seed; resumes
    steprune ablate --config sweeps/ablation_table4.yaml --trainer.max_steps=100   # extra training overrides

Each cell (variant x seed) is one `steprune train fit` run with the variant's overrides and
`--seed_everything=<seed>`, logged as an MLflow run nested under the grid's parent run in one experiment,
tagged with variant, seed, method, budget and git commit. With `test_limit > 0` the exported selector is
then evaluated on that many test questions of the built-in world (`test/retention`, `test/k_mean`, a K
histogram). A rerun skips every cell whose MLflow run FINISHED (its metrics are read back); cells left
RUNNING by a killed process are marked KILLED and run again. The summary — mean ± std (sample std over
seeds) retention and mean K per variant, and whether the reference beats each one-change variant as in
the paper (bidirectional > causal; full > each aggregation) — is printed with rich, saved to
`<out>.json` / `<out>.md` and logged to the parent run with a bar chart.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steprune.eval.base_label import base_facts, base_line
from steprune.eval.report_figures import ablation_bars, k_histogram
from steprune.sweeps.spec import AblationSpec, SweepConfigError, load_spec
from steprune.sweeps.tracking import Tracker
from steprune.sweeps.train import TrainRequest, check_args, train_run

log = logging.getLogger("steprune.sweeps")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN propagates, e.g. a 0-accuracy reference)."""
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


class Ablation:
    def __init__(self, spec: AblationSpec) -> None:
        self.spec = spec
        self.bases: dict[str, str | None] = {}  # "variant/seedN" -> the cell's base path; fingerprints below
        self.fingerprints: dict[str, str | None] = {}
        self.tracker = Tracker(spec.mlflow.tracking_uri, spec.mlflow.experiment)
        self.parent = self.tracker.parent_run(
            {"ablation.grid": spec.name},
            spec.name,
            tags={"method": "stepprune", "budget": "adaptive", "variant": "grid", "sweep.file": spec.source},
        )

    def cell_tags(self, variant: str, seed: int) -> dict[str, str]:
        return {"ablation.grid": self.spec.name, "variant": variant, "seed": str(seed), "sweep.role": "cell"}

    def finished(self, variant: str, seed: int) -> Any | None:
        """The cell's FINISHED run, if any; RUNNING ones left by a killed process are marked KILLED."""
        done = None
        for run in self.tracker.find(self.cell_tags(variant, seed), parent_id=self.parent):
            if run.info.status == "FINISHED" and done is None:
                done = run
            elif run.info.status == "RUNNING":
                self.tracker.finish(run.info.run_id, "KILLED")
        return done

    def run_cell(self, variant: str, seed: int, extra_args: Sequence[str]) -> dict[str, float]:
        spec = self.spec
        overrides = spec.variants[variant]
        tags = {**self.cell_tags(variant, seed), "method": "stepprune", "budget": "adaptive", **spec.training.tags}
        run_id = self.tracker.child_run(self.parent, f"{variant}-seed{seed}", tags, overrides)
        try:
            result = train_run(self.request(variant, seed, run_id, extra_args))
            facts = base_facts(result.backbone) or {}
            self.bases[f"{variant}/seed{seed}"] = str(result.backbone)
            self.fingerprints[f"{variant}/seed{seed}"] = facts.get("weights_sha256")
            if facts.get("weights_sha256"):
                self.tracker.client.set_tag(run_id, "base.weights_sha256", facts["weights_sha256"])
            metrics = {k: v for k, v in result.metrics.items() if k.startswith("val/")}  # logged by Lightning
            self.tracker.log_final(run_id, metrics, fallback_step=result.global_step)
            if spec.test_limit > 0:
                test = self.test(result.backbone, str(result.selector), run_id, variant, seed)
                self.tracker.log_metrics(run_id, test, step=result.global_step)
                metrics.update(test)
            missing = [m for m in spec.metrics.values() if m not in metrics]
            if missing:
                raise KeyError(f"metric(s) {missing} were never logged (logged: {sorted(metrics)})")
            self.tracker.finish(run_id, "FINISHED")
            return metrics
        except Exception as error:
            self.tracker.client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:4000])
            self.tracker.finish(run_id, "FAILED")
            raise

    def test(self, backbone: str, weights: str, run_id: str, variant: str, seed: int) -> dict[str, float]:
        from steprune.eval.world_eval import evaluate_world

        report = evaluate_world(backbone, ["steprune"], [1], split="test", limit=self.spec.test_limit, weights=weights)
        vanilla, row = report["rows"][0], report["rows"][1]
        ks = [k for k, count in enumerate(row["k_histogram"]) for _ in range(count)]
        fig = k_histogram(ks, f"{variant}, seed {seed}: K on {len(ks)} test questions")
        self.tracker.client.log_figure(run_id, fig, "figures/k_histogram.png")
        return {
            "test/acc": row["overall"],
            "test/unpruned_acc": vanilla["overall"],
            "test/retention": row["retention"],
            "test/k_mean": row["k_mean"],
        }

    def request(self, variant: str, seed: int, run_id: str, extra_args: Sequence[str]) -> TrainRequest:
        spec = self.spec
        return TrainRequest(
            configs=spec.training.experiment,
            overrides=spec.variants[variant],
            seed=seed,
            run_id=run_id,
            tracking_uri=self.tracker.uri,
            experiment=spec.mlflow.experiment,
            workdir=Path(spec.training.workdir) / spec.name / f"{variant}-seed{seed}",
            extra_args=[*spec.training.train_args, *extra_args],
        )

    def run(self, extra_args: Sequence[str] = ()) -> dict[str, Any]:
        spec = self.spec
        for variant in spec.variants:  # every variant's command line parses before anything trains
            check_args(self.request(variant, spec.seeds[0], "0" * 32, extra_args))
        cells: dict[str, dict[int, dict[str, float]]] = {v: {} for v in spec.variants}
        errors: dict[str, str] = {}
        reused = 0
        for seed in spec.seeds:  # seed-major: after a few cells every variant has a first value
            for variant in spec.variants:
                run = self.finished(variant, seed)
                if run is not None:
                    cells[variant][seed] = dict(run.data.metrics)
                    self.bases[f"{variant}/seed{seed}"] = run.data.params.get("backbone")
                    self.fingerprints[f"{variant}/seed{seed}"] = run.data.tags.get("base.weights_sha256")
                    reused += 1
                    continue
                try:
                    cells[variant][seed] = self.run_cell(variant, seed, extra_args)
                except Exception as error:  # one cell fails alone; the grid goes on
                    errors[f"{variant}/seed{seed}"] = f"{type(error).__name__}: {error}"
                    log.warning("ablation cell %s seed %d FAILED: %s", variant, seed, error)
        report = summarise(spec, cells)
        report.update(reused=reused, errors=errors, parent_run_id=self.parent, **self.base_record())
        self.save(report)
        if not errors and all(len(c) == len(spec.seeds) for c in cells.values()):
            self.tracker.finish(self.parent, "FINISHED")
        return report

    def base_record(self) -> dict[str, Any]:
        """The base every cell was trained on (its facts now), and the cells whose recorded fingerprint differs."""
        paths = {p for p in self.bases.values() if p}
        if len(paths) != 1:
            return {"base": None, "bases": sorted(paths), "base_mismatch": []}
        facts = base_facts(next(iter(paths)))
        now = (facts or {}).get("weights_sha256")
        mismatch = sorted(cell for cell, sha in self.fingerprints.items() if sha and now and sha != now)
        unrecorded = sorted(cell for cell, sha in self.fingerprints.items() if not sha)
        return {"base": facts, "base_mismatch": mismatch, "base_unrecorded": unrecorded}

    def save(self, report: dict[str, Any]) -> None:
        out = Path(self.spec.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2))
        out.with_suffix(".md").write_text(markdown(report))
        client = self.tracker.client
        client.log_text(self.parent, markdown(report), "ablation.md")
        client.log_dict(self.parent, report, "ablation.json")
        client.log_figure(self.parent, ablation_bars(report["rows"], self.spec.name), "figures/ablation.png")
        for row in report["rows"]:
            if row["seeds"]:
                client.log_metric(self.parent, f"retention/{row['variant'].replace('+', '.')}", row["retention_mean"])


def summarise(spec: AblationSpec, cells: dict[str, dict[int, dict[str, float]]]) -> dict[str, Any]:
    retention_key, k_key = spec.metrics["retention"], spec.metrics["k"]
    rows = []
    for variant, by_seed in cells.items():
        seeds = sorted(s for s, m in by_seed.items() if retention_key in m and k_key in m)
        retention = [by_seed[s][retention_key] for s in seeds]
        ks = [by_seed[s][k_key] for s in seeds]
        (r_mean, r_std), (k_mean, k_std) = _mean_std(retention), _mean_std(ks)
        rows.append(
            {
                "variant": variant,
                "overrides": spec.variants[variant],
                "seeds": seeds,
                "retention": retention,
                "retention_mean": r_mean,
                "retention_std": r_std,
                "k": ks,
                "k_mean": k_mean,
                "k_std": k_std,
            }
        )
    comparisons = []
    if spec.reference is not None:
        by_name = {r["variant"]: r for r in rows}
        ref = spec.variants[spec.reference]
        for variant, overrides in spec.variants.items():
            changed = [p for p in ref if ref[p] != overrides.get(p)]
            if variant == spec.reference or len(changed) != 1:
                continue
            a, b = by_name[spec.reference]["retention_mean"], by_name[variant]["retention_mean"]
            comparisons.append(
                {
                    "claim": f"{spec.reference} > {variant}",
                    "changed": changed[0],
                    "delta": a - b,
                    "holds": bool(a > b) if a == a and b == b else None,
                }
            )
    return {
        "grid": spec.name,
        "test_limit": spec.test_limit,
        "seeds": list(spec.seeds),
        "metrics": spec.metrics,
        "reference": spec.reference,
        "rows": rows,
        "paper_ordering": comparisons,
    }


def markdown(report: dict[str, Any]) -> str:
    metric, k = report["metrics"]["retention"], report["metrics"]["k"]
    header = [base_line(report.get("base")).rstrip()] if report.get("base") else []
    if report.get("bases"):
        header.append(f"Cells trained on {len(report['bases'])} different bases: {', '.join(report['bases'])}")
    if report.get("base_mismatch"):
        header.append(f"**Rebuilt since**: the base's weights changed after cells {', '.join(report['base_mismatch'])}")
    if report.get("base_unrecorded"):
        count = len(report["base_unrecorded"])
        header.append(f"{count} cell(s) ran before cells recorded the base's fingerprint: their base is named by path.")
    if report.get("test_limit"):
        per_cell = f"{report['test_limit']} test questions of the built-in world per cell"
        header.append(f"{per_cell}; mean ± sample std over seeds.")
    lines = [line for text in header for line in (text, "")]
    lines += [
        f"| variant | seeds | {metric} mean ± std (%) | {k} mean ± std |",
        "|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['variant']} | {len(r['seeds'])} | {100 * r['retention_mean']:.1f} ± {100 * r['retention_std']:.1f} "
            f"| {r['k_mean']:.1f} ± {r['k_std']:.1f} |"
        )
    if report["paper_ordering"]:
        lines += ["", "| paper's claim | holds here | Δ retention (pp) |", "|---|---|---|"]
        for c in report["paper_ordering"]:
            holds = "n/a" if c["holds"] is None else ("yes" if c["holds"] else "no")
            lines.append(f"| {c['claim']} | {holds} | {100 * c['delta']:+.1f} |")
    return "\n".join(lines) + "\n"


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ablation {report['grid']} (seeds {report['seeds']}; std over seeds)")
    for column in ("variant", "seeds", f"{report['metrics']['retention']} %", f"{report['metrics']['k']}"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for r in report["rows"]:
        table.add_row(
            r["variant"],
            str(len(r["seeds"])),
            f"{100 * r['retention_mean']:.1f} ± {100 * r['retention_std']:.1f}",
            f"{r['k_mean']:.1f} ± {r['k_std']:.1f}",
        )
    console = Console()
    console.print(table)
    for c in report["paper_ordering"]:
        holds = "n/a" if c["holds"] is None else ("holds" if c["holds"] else "does NOT hold")
        console.print(f"  {c['claim']}: {holds} ({100 * c['delta']:+.1f} pp)")
    for cell, error in report.get("errors", {}).items():
        console.print(f"  [red]{cell} failed[/red]: {error}")


def run_ablation(config: str | Path | AblationSpec, extra_args: Sequence[str] = ()) -> dict[str, Any]:
    spec = config if isinstance(config, AblationSpec) else load_spec(config)
    if not isinstance(spec, AblationSpec):
        raise TypeError(f"{config}: a sweep file; run it with `steprune sweep --config {config}`")
    return Ablation(spec).run(extra_args)


def ablate_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="steprune ablate",
        description=__doc__.splitlines()[0],
        epilog="Any other --option goes to every run's `steprune train fit` (e.g. --trainer.max_steps=100).",
    )
    parser.add_argument("--config", default="sweeps/ablation_table4.yaml", help="an ablation grid under sweeps/")
    args, train_args = parser.parse_known_args(argv)  # the rest goes to every run's `steprune train fit`
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = load_spec(args.config)
        if not isinstance(spec, AblationSpec):
            parser.error(f"{args.config} is a sweep: run `steprune sweep --config {args.config}`")
        report = Ablation(spec).run(train_args)
    except (SweepConfigError, ValueError) as error:
        parser.error(str(error))
    print_report(report)
    print(f"-> {Path(spec.out).with_suffix('.md')}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(ablate_main())
