"""The verdict as text (summary line, known deviations, the cells), JSON and markdown.

The summary line names the differing cells with the largest differences first, ours before CAA's:
`ab-7b: 61/63 cells reproduced; differs: sycophancy +1 (0.62 vs 0.81)`.
"""

from __future__ import annotations

import math
from typing import Any

from caa_eval import vocab
from caa_eval.reproduce.compare import CellVerdict, Comparison

__all__ = ["cell_name", "summary_line", "text_lines", "as_json", "markdown"]

_SHOWN = 3  # differing cells named in the summary line


def cell_name(cell: CellVerdict | Any, many_layers: bool) -> str:
    """`sycophancy +1`, `sycophancy pos +1`, `sycophancy L13 +1`: what differs between the experiment's cells.

    Args:
        cell: a compared or reference cell.
        many_layers: whether the experiment has more than one layer (then the layer is named).
    """
    parts = [cell.behaviour]
    if cell.condition != "none":
        parts.append(cell.condition)
    if many_layers:
        parts.append(f"L{cell.layer}")
    parts.append(vocab.format_multiplier(cell.multiplier))
    return " ".join(parts)


def _many_layers(cmp: Comparison) -> bool:
    return len(cmp.experiment.reference.layers) > 1


def _fmt(x: float, cmp: Comparison) -> str:
    return f"{x:.1f}" if cmp.experiment.scale == "score" else f"{x:.2f}"


def summary_line(cmp: Comparison) -> str:
    """`NAME: R/C cells reproduced; differs: ...; only in the reference: N; only in the run: M`.

    Args:
        cmp: the comparison.
    """
    line = f"{cmp.experiment.name}: {cmp.reproduced}/{cmp.compared} cells reproduced"
    differs = sorted((c for c in cmp.cells if c.verdict == "differs"), key=lambda c: -abs(c.difference))
    if differs:
        named = [
            f"{cell_name(c, _many_layers(cmp))} ({_fmt(c.ours, cmp)} vs {_fmt(c.reference, cmp)})"
            for c in differs[:_SHOWN]
        ]
        more = f" and {len(differs) - _SHOWN} more" if len(differs) > _SHOWN else ""
        line += "; differs: " + ", ".join(named) + more
    if cmp.only_reference:
        line += f"; only in the reference: {len(cmp.only_reference)}"
    if cmp.only_run:
        line += f"; only in the run: {len(cmp.only_run)}"
    return line


def _ci_text(c: CellVerdict, cmp: Comparison) -> str:
    if any(math.isnan(b) for b in c.ci):
        return "n/a"
    return f"[{_fmt(c.ci[0], cmp)}, {_fmt(c.ci[1], cmp)}]"


def text_lines(cmp: Comparison, all_cells: bool = False) -> list[str]:
    """The summary line, the known deviations, then the differing cells (all cells with all_cells) and the
    cells only one side has.

    Args:
        cmp: the comparison.
        all_cells: list reproduced cells too.
    """
    many = _many_layers(cmp)
    lines = [summary_line(cmp), f"tolerance {cmp.tolerance:g} (or CAA's number inside our 95% CI); known deviations:"]
    lines += [f"  - {d}" for d in cmp.experiment.deviations]
    shown = [c for c in cmp.cells if all_cells or c.verdict == "differs"]
    if shown:
        lines.append(f"  {'cell':34} {'CAA':>6} {'ours':>6} {'diff':>6}  {'our 95% CI':14} verdict")
    for c in shown:
        lines.append(
            f"  {cell_name(c, many):34} {_fmt(c.reference, cmp):>6} {_fmt(c.ours, cmp):>6} "
            f"{c.difference:>+6.2f}  {_ci_text(c, cmp):14} {c.verdict}"
        )
    if cmp.only_reference:
        names = ", ".join(cell_name(r, many) for r in cmp.only_reference)
        lines.append(f"only in the reference ({len(cmp.only_reference)}): {names}")
    if cmp.only_run:
        names = ", ".join(_run_cell_name(r) for r in cmp.only_run)
        lines.append(f"only in the run ({len(cmp.only_run)}): {names}")
    return lines


def _run_cell_name(cell: dict[str, Any]) -> str:
    layer = f" L{cell['layer']}" if cell["layer"] else ""
    cond = "" if cell["condition"] == "none" else f" {cell['condition']}"
    return f"{cell['behaviour']}{cond}{layer} {vocab.format_multiplier(float(cell['multiplier']))} ({cell['task']})"


def as_json(cmp: Comparison) -> dict[str, Any]:
    """The issue's JSON shape plus the summary, tolerance, deviations and the one-sided cells.

    Args:
        cmp: the comparison.
    """
    return {
        "experiment": cmp.experiment.name,
        "cells": [c.as_json() for c in cmp.cells],
        "reproduced": cmp.reproduced,
        "compared": cmp.compared,
        "summary": summary_line(cmp),
        "tolerance": cmp.tolerance,
        "deviations": list(cmp.experiment.deviations),
        "only_reference": [
            {"behaviour": r.behaviour, "layer": r.layer, "multiplier": r.multiplier, "condition": r.condition}
            for r in cmp.only_reference
        ],
        "only_run": [{**r, "multiplier": float(r["multiplier"])} for r in cmp.only_run],
    }


def markdown(cmp: Comparison) -> str:
    """A markdown page: summary, deviations, every compared cell, the one-sided cells.

    Args:
        cmp: the comparison.
    """
    many = _many_layers(cmp)
    out = [f"# Reproduction: {cmp.experiment.name}", "", f"**{summary_line(cmp)}**", ""]
    out += [f"{cmp.experiment.title}. Tolerance {cmp.tolerance:g}, or CAA's number inside our 95% CI.", ""]
    out += ["Known deviations:", ""] + [f"- {d}" for d in cmp.experiment.deviations] + [""]
    out += ["| cell | CAA | ours | difference | our 95% CI | n | verdict |", "|---|---:|---:|---:|---|---:|---|"]
    for c in cmp.cells:
        out.append(
            f"| {cell_name(c, many)} | {_fmt(c.reference, cmp)} | {_fmt(c.ours, cmp)} | {c.difference:+.3f} "
            f"| {_ci_text(c, cmp)} | {c.n} | {c.verdict} |"
        )
    if cmp.only_reference:
        out += ["", f"Only in the reference ({len(cmp.only_reference)}): "]
        out[-1] += ", ".join(cell_name(r, many) for r in cmp.only_reference)
    if cmp.only_run:
        out += ["", f"Only in the run ({len(cmp.only_run)}): " + ", ".join(_run_cell_name(r) for r in cmp.only_run)]
    return "\n".join(out) + "\n"
