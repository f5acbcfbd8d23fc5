"""The paper's Fig. 4 for a saved selector study: accuracy per K bucket, one panel per selector.

    python -m steprune.eval.k_bucket_figure reports/stepprune_study_x.json            # -> ..._k_buckets.png
    python -m steprune.eval.k_bucket_figure reports/stepprune_study_x.json --out fig.png

Reads the JSON that `steprune.eval.selector_study` writes (each selector's `k_buckets` rows: six log-spaced
buckets, accuracy with 95 % intervals, the unpruned model on the same questions) and draws nothing it does not
find there; the title says the spread over buckets with enough questions, as the study's table does.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from steprune.eval.report_figures import k_buckets_grid


def bucket_panels(report: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(panel title, bucket rows) per selector of a selector-study report; ValueError if it has none."""
    selectors = report.get("selectors") or []
    panels = []
    for s in selectors:
        if not s.get("k_buckets"):
            raise ValueError(f"selector {s.get('name')!r} has no k_buckets rows (not a selector_study report?)")
        spread = s.get("bucket_spread_retention")
        name = f"{s['name']}: K {s['k_mean']:.1f}" + (f", spread {100 * spread:.1f}" if spread is not None else "")
        panels.append((name, s["k_buckets"]))
    if not panels:
        raise ValueError("the report lists no selectors (make one with python -m steprune.eval.selector_study)")
    return panels


def figure(report: dict[str, Any]) -> Figure:
    title = f"accuracy per K bucket, {report.get('questions', '?')} {report.get('split', '')} questions"
    return k_buckets_grid(bucket_panels(report), title)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="a selector_study JSON")
    parser.add_argument("--out", default=None, help="PNG path (default: the report's name + _k_buckets.png)")
    args = parser.parse_args(argv)
    path = Path(args.report)
    if not path.is_file():
        parser.error(f"no report at {path}")
    try:
        fig = figure(json.loads(path.read_text()))
    except (ValueError, KeyError, json.JSONDecodeError) as error:
        parser.error(f"{path}: {error}")
    out = Path(args.out) if args.out else path.with_name(path.stem + "_k_buckets.png")
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
