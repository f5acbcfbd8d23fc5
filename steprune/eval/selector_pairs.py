"""Paired differences between selectors saved in selector-study reports (the same questions, two studies or one).

    python -m steprune.eval.selector_pairs \
        reports/stepprune_study_paper_v5.json:paper-k16-s0 \
        reports/stepprune_study_prior_v5_k16_3seeds.json:d32abs16-s0 \
        [A2 B2 ...] [--out reports/paper_vs_removal_v5.md]

Each argument is REPORT.json:SELECTOR (the selector's name in that study); they are taken in pairs A B and each pair
prints A minus B in retention points with a 95 % paired-bootstrap interval (`steprune.eval.intervals`), resampling
the questions jointly with the unpruned model's correctness. `steprune.eval.selector_study` compares each selector
with the baselines; this compares selectors with each other, e.g. two surrogates at the same calibrated K, without
running either again. The two reports must hold the same questions and the same unpruned answers (same base, split,
limit and seed); otherwise it refuses.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steprune.eval.intervals import paired_difference


def load_selector(spec: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(selector row, unpruned row) of REPORT.json:NAME; a clear error naming the selectors the report has."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path:
        raise ValueError(f"{spec!r}: expected REPORT.json:SELECTOR")
    report = json.loads(Path(path).read_text())
    rows = report.get("rows", [])
    found = [r for r in rows if r.get("variant") == name and "correct" in r]
    if not found:
        names = [r["variant"] for r in rows if r.get("method") == "steprune" and r.get("variant")]
        raise ValueError(f"{path} has no selector {name!r}; it has: {', '.join(names) or 'none'}")
    vanilla = next((r for r in rows if r.get("method") == "vanilla"), None)
    if vanilla is None:
        raise ValueError(f"{path} has no unpruned (vanilla) row to take retention against")
    return found[0], vanilla


def pair_row(a_spec: str, b_spec: str, seed: int = 0) -> dict[str, Any]:
    """A minus B on the same questions, in retention points (fractions; x 100 for points)."""
    (a, vanilla_a), (b, vanilla_b) = load_selector(a_spec), load_selector(b_spec)
    if vanilla_a["correct"] != vanilla_b["correct"]:
        raise ValueError(f"{a_spec} and {b_spec} are not on the same questions (their unpruned answers differ)")
    ci = paired_difference(a["correct"], b["correct"], vanilla_a["correct"], seed=seed)
    return {
        "a": a_spec,
        "b": b_spec,
        "a_k_mean": a["k_mean"],
        "b_k_mean": b["k_mean"],
        "a_retention": a["retention"],
        "b_retention": b["retention"],
        "diff_retention": ci.point,
        "diff_retention_ci": [ci.low, ci.high],
        "questions": len(a["correct"]),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| A | B | K mean A / B | retention % A / B | A − B, points [95 % CI] | questions |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["diff_retention_ci"]
        lines.append(
            f"| {r['a']} | {r['b']} | {r['a_k_mean']:.1f} / {r['b_k_mean']:.1f} | "
            f"{100 * r['a_retention']:.1f} / {100 * r['b_retention']:.1f} | "
            f"{100 * r['diff_retention']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | {r['questions']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("selectors", nargs="+", help="REPORT.json:SELECTOR, in pairs A B")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--out", type=Path, default=None, help="also write this Markdown file (and its .json)")
    args = parser.parse_args(argv)
    if len(args.selectors) % 2:
        parser.error(f"selectors come in pairs A B; got {len(args.selectors)}")
    pairs = zip(args.selectors[::2], args.selectors[1::2], strict=True)
    try:
        rows = [pair_row(a, b, args.seed) for a, b in pairs]
    except (ValueError, OSError) as error:
        parser.error(str(error))
    text = markdown(rows)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
