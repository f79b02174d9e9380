"""The report's entanglement section: the matrix of every vector × multiplier against every measured task
(`caa_eval.stats.entanglement`) as a markdown table and a heat map.

The heat map colours each cell by its difference vs multiplier 0 divided by the largest |difference| in its
column, so that a 0–10 judge score and a probability share one colour scale; the printed number is the raw
difference. The colour map is ColorBrewer's PuOr (diverging, readable with the common colour-vision
deficiencies); `*` marks Holm-significant cells, a black frame the diagonal (the intended effect).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from caa_eval.report.figures import save_png
from caa_eval.report.tables import digits, md_table
from caa_eval.stats.entanglement import entanglement_matrix, entanglement_records
from caa_eval.vocab import format_multiplier

__all__ = ["HEATMAP_FILE", "entanglement_section", "entanglement_markdown", "entanglement_heatmap"]

HEATMAP_FILE = "entanglement.png"
_CMAP = "PuOr"


def _row_labels(matrix: pd.DataFrame) -> pd.Series:
    """`vector ×m`, plus the layer and condition when they vary: one label per matrix row."""
    label = matrix["vector"] + " ×" + matrix["multiplier"].map(format_multiplier)
    if matrix["layer"].nunique() > 1:
        label = label + " L" + matrix["layer"].astype(str)
    if matrix["condition"].nunique() > 1:
        label = label + " (" + matrix["condition"] + ")"
    return label


def _grid(matrix: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(difference, marked, diagonal) as rows × `task (metric)` columns."""
    framed = matrix.assign(row=_row_labels(matrix), column=matrix["task"] + " (" + matrix["metric"] + ")")
    order = list(dict.fromkeys(framed["row"]))
    cols = list(dict.fromkeys(framed["column"]))
    pivot = {
        name: framed.pivot(index="row", columns="column", values=name).reindex(index=order, columns=cols)
        for name in ("difference", "significant", "diagonal")
    }
    return pivot["difference"], pivot["significant"], pivot["diagonal"]


def entanglement_markdown(matrix: pd.DataFrame, alpha: float) -> list[str]:
    """The matrix as a markdown table: difference vs 0 [95% CI], `*` significant after Holm over the matrix.

    Args:
        matrix: entanglement_matrix output (non-empty).
        alpha: level of the mark.
    """
    framed = matrix.assign(row=_row_labels(matrix), column=matrix["task"] + " (" + matrix["metric"] + ")")
    rows, cols = list(dict.fromkeys(framed["row"])), list(dict.fromkeys(framed["column"]))
    text = {}
    for r in framed.itertuples(index=False):
        n = digits(r.metric)
        ci = "" if not np.isfinite(r.ci_low) else f" [{r.ci_low:+.{n}f}, {r.ci_high:+.{n}f}]"
        value = "–" if not np.isfinite(r.difference) else f"{r.difference:+.{n}f}{'*' if r.significant else ''}{ci}"
        text[(r.row, r.column)] = f"**{value}**" if r.diagonal else value
    body = [[row] + [text.get((row, c), "") for c in cols] for row in rows]
    return [
        "## Entanglement: every vector on every task",
        "",
        "Difference vs multiplier 0 on each task's primary metric (paired, same items) [95% CI]; `*` = "
        f"significant after Holm over the {matrix.attrs.get('n_tests', len(matrix))} tests of this matrix "
        f"(α = {alpha}); **bold** = the vector's own behaviour (the intended effect), the rest are side effects. "
        f"Heat map: `{HEATMAP_FILE}`.",
        "",
        *([f"_{matrix.attrs['note']}_", ""] if matrix.attrs.get("note") else []),
        md_table(["vector × multiplier", *cols], body, 1),
        "",
    ]


def entanglement_heatmap(matrix: pd.DataFrame, path: Path) -> Path:
    """The heat map PNG (columns scaled by their largest |difference|; numbers are the raw differences).

    Args:
        matrix: entanglement_matrix output (non-empty).
        path: the PNG to write.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    diff, marked, diagonal = _grid(matrix)
    scale = diff.abs().max(axis=0).replace(0, 1.0).fillna(1.0)
    values = (diff / scale).to_numpy(dtype=float)
    fig = Figure(figsize=(3.0 + 1.4 * diff.shape[1], 1.6 + 0.42 * diff.shape[0]), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap=_CMAP, vmin=-1, vmax=1, aspect="auto")
    for i, j in np.ndindex(values.shape):
        d = diff.iat[i, j]
        if np.isfinite(d):
            star = "*" if pd.notna(marked.iat[i, j]) and bool(marked.iat[i, j]) else ""
            colour = "white" if abs(values[i, j]) > 0.6 else "black"
            ax.text(j, i, f"{d:+.2g}{star}", ha="center", va="center", fontsize=7, color=colour)
        if pd.notna(diagonal.iat[i, j]) and bool(diagonal.iat[i, j]):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.5))
    ax.set_xticks(range(diff.shape[1]), [c.replace(" (", "\n(") for c in diff.columns], fontsize=7, rotation=30)
    ax.set_yticks(range(diff.shape[0]), list(diff.index), fontsize=7)
    fig.colorbar(image, ax=ax, label="diff / column max |diff|")
    ax.set_title("Entanglement: difference vs multiplier 0 (* Holm-significant, frame = own behaviour)", fontsize=9)
    return save_png(fig, path)


def entanglement_section(
    cells: pd.DataFrame, out_dir: Path, alpha: float, primary_test: str
) -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]]]:
    """(report.json `entanglement` records, markdown lines, figure entries); all empty without a matrix.

    Args:
        cells: compute_stats output (primary metrics).
        out_dir: the report folder (the heat map goes there).
        alpha: level of the Holm mark.
        primary_test: "wilcoxon" or "permutation": whose p-values are corrected.
    """
    matrix = entanglement_matrix(cells, alpha, primary_test)
    if matrix.empty:
        return [], [], []
    entanglement_heatmap(matrix, out_dir / HEATMAP_FILE)
    figure = {"file": HEATMAP_FILE, "kind": "entanglement", "title": "every vector × multiplier on every task"}
    return entanglement_records(matrix), entanglement_markdown(matrix, alpha), [figure]
