"""Rendering of a `steprune.eval.bench` report: the rich table printed to the terminal and the Markdown table.

Both are built from the same cells (`table_cells`); the latency columns are left out of a `--flops-only`
report, which measured no time.

    from steprune.eval.bench_report import markdown_report, print_table
    print_table(report)                                  # report = run_bench(...)
    Path("reports/flops_llava-7b.md").write_text(markdown_report(report, "python -m steprune.eval.bench ..."))
"""

from __future__ import annotations

from steprune.pruners import PRUNERS

FLOPS_COLUMNS = (
    "method",
    "budget",
    "tokens",
    "equiv. tokens",
    "LLM stages (layer: tokens)",
    "LLM TFLOPs",
    "LLM + sel. TFLOPs",
    "total TFLOPs",
    "selection GFLOPs",
)
LATENCY_COLUMNS = ("latency ms", "speed-up", "of ideal")


def tokens_cell(row: dict) -> str:
    """Visual tokens reaching the last layer; an adaptive method that kept fewer than its budget says so."""
    cell = f"{row['tokens']:.1f}"
    adaptive = row["method"] in PRUNERS.names() and PRUNERS.get(row["method"]).adaptive
    if adaptive and row["budget"] is not None and row["tokens"] < row["budget"]:
        cell += f" (adaptive: kept < {row['budget']})"
    return cell


def table_cells(report: dict) -> tuple[list[str], list[list[str]]]:
    """(column names, one list of cells per row) of `report`; no latency columns when nothing was timed."""
    timed = not report.get("flops_only", False)
    columns = [*FLOPS_COLUMNS, *(LATENCY_COLUMNS if timed else ())]
    rows = []
    for r in report["rows"]:
        cells = [
            r["method"],
            "-" if r["budget"] is None else str(r["budget"]),
            tokens_cell(r),
            f"{r['equivalent_tokens']:.1f}",
            ", ".join(f"{layer}: {k}" for layer, k in r["stages"]),
            f"{r['llm_tflops']:.3f}",
            f"{r['llm_selection_tflops']:.3f}",
            f"{r['total_tflops']:.3f}",
            f"{r['selection_gflops']:.3g}",
        ]
        if timed:
            cells += [f"{r['latency_ms']:.2f}", f"{r['speedup']:.2f}x", f"{r['ideal_fraction']:.0%}"]
        rows.append(cells)
    return columns, rows


def title(report: dict) -> str:
    timed = f"{report['hardware']} ({report['device']}, {report['dtype']})"
    where = "FLOPs only" if report.get("flops_only") else timed
    return (
        f"Prefill cost — {report['config']} config, {report['visual_tokens']} visual + {report['text_tokens']} text "
        f"tokens, batch {report['batch']}, {where}"
    )


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    columns, rows = table_cells(report)
    table = Table(title=title(report))
    for column in columns:
        table.add_column(column, justify="left" if column in ("method", FLOPS_COLUMNS[4]) else "right")
    for cells in rows:
        table.add_row(*cells)
    Console(width=max(Console().width, 170)).print(table)


def markdown_report(report: dict, command: str) -> str:
    """A short Markdown page: what was measured and how, the table, and the command that produced it."""
    columns, rows = table_cells(report)
    lines = [
        f"# {title(report)}",
        "",
        "Produced by (`OMP_WAIT_POLICY=PASSIVE nice -n 15` on a shared CPU):",
        "",
        f"    {command}",
        "",
        "- FLOPs: multiply-add = 2, per LLM layer `2(4nd^2 + 2n^2d + 3ndm)` at the real sequence length (visual + "
        f"{report['text_tokens']} text tokens), causal mask not discounted, LM head excluded "
        "(`steprune.eval.flops`). *LLM* is the LLM alone; *LLM + sel.* adds the selection's own FLOPs (the "
        "figure without the vision tower); *total* adds the vision tower "
        f"({report['vision_tflops']:.3f} T) and the projector ({report['projector_tflops']:.3f} T), the same for "
        "every row since both see the whole image.",
        "- *tokens*: visual tokens reaching the last LLM layer; *equiv. tokens*: layer-averaged (differs for "
        "in-LLM methods, whose *stages* list the visual tokens alive from each layer on).",
        "- StepPrune: an untrained selector (random weights, like the model) capped at T_max = budget; the row "
        "reports the tokens it kept and its analytic selector FLOPs at these widths.",
        "- Adaptive methods (StepPrune, PruMerge+) choose K from their inputs and weights, here random ones: a row "
        "marked *adaptive: kept < budget* is costed at what the method kept on this model, which a trained "
        "selector or real CLIP weights need not keep.",
    ]
    if report.get("flops_only"):
        proxy = report["proxy"]
        lines.append(
            f"- No timing. Each method ran once on a proxy model ({proxy['parameters'] / 1e9:.2f} B parameters, "
            "random weights): the real config with the LLM's MLP cut to intermediate_size "
            f"{proxy['text_intermediate_size']}, every other width real. The proxy only reports each method's "
            "stages, kept tokens and selection FLOPs (pre-LLM methods stop after the vision tower + selection; "
            "in-LLM methods run the prefill); the FLOPs above are computed analytically on the real "
            f"`{report['config']}` config (`measured_prefill_cost`)."
        )
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"
