"""Markdown/JSON/PNG report for a sweep folder, a folder of lm-eval runs, or a long table.

`tables` (paper-shaped pivots and markdown), `figures` (matplotlib PNGs), `table4` (finetuning × steering),
`scale` (each multiplier as residual-norm fraction and KL; effects per unit of KL), `build` (report.json, report.md).
The numbers all come from caa_eval.stats; docs/statistics.md ("Reading the report") explains them.
"""

from __future__ import annotations

from caa_eval.report.build import build_report, render_markdown
from caa_eval.report.figures import dose_figures, layer_figures
from caa_eval.report.tables import cells_markdown, dose_markdown, pivot_tables, table_markdown

__all__ = [
    "build_report",
    "render_markdown",
    "table_markdown",
    "pivot_tables",
    "cells_markdown",
    "dose_markdown",
    "dose_figures",
    "layer_figures",
]
