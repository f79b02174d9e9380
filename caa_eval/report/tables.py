"""Paper-shaped pivots of the per-cell statistics and their markdown.

Behaviour families give Table-4-shaped pivots (behaviour × multiplier); the families every behaviour vector
is measured on (MMLU, and the full-MMLU variant apart from it) give Table-5-shaped ones. Each entry keeps
its CI, n and Holm/BH mark, so the markdown and report.json say the same thing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from caa_eval.stats.table import GROUP_KEY
from caa_eval.vocab import JUDGE_METRIC, TASK_FAMILIES, format_multiplier, primary_metric, task_family

__all__ = [
    "MMLU_FAMILY",
    "SHARED_FAMILIES",
    "FAMILY_TITLES",
    "FAMILY_LABELS",
    "PANEL_CONFIG",
    "family_of",
    "digits",
    "mark",
    "baseline_row",
    "pivot_tables",
    "table_markdown",
    "cells_markdown",
    "dose_markdown",
    "diagnostics_markdown",
    "md_table",
]

MMLU_FAMILY = "caa_mmlu_2opt"
# families shared by every behaviour vector (capability checks): one Table-5-shaped table each
SHARED_FAMILIES = tuple(family for _, family, _, own in TASK_FAMILIES if not own)
FAMILY_TITLES = {
    "caa_ab": "A/B behaviour questions — p(answer matching behaviour)",
    "caa_ab_balanced": "A/B behaviour questions, balanced letters — p(answer matching behaviour)",
    "caa_open": "Open-ended answers — judge score (0–10)",
    MMLU_FAMILY: "Two-option MMLU, CAA's subset — p(correct)",
    "caa_mmlu_2opt_full": "Two-option MMLU, all test questions — p(correct)",
    "caa_tqa_2opt": "Two-option TruthfulQA (CAA's 817 items) — p(correct)",
}
FAMILY_LABELS = {  # short names for figure legends and axes
    "caa_ab": "A/B p(match)",
    "caa_ab_balanced": "A/B balanced p(match)",
    "caa_open": "open-ended judge (0–10)",
    MMLU_FAMILY: "MMLU p(correct)",
    "caa_mmlu_2opt_full": "MMLU full p(correct)",
    "caa_tqa_2opt": "TruthfulQA p(correct)",
}
PANEL_CONFIG = ["condition", "layer", "site", "positions"]


def family_of(task: str, metric: str) -> str:
    """The task family of a cell; a user task scored by p(correct) counts as MMLU.

    Args:
        task: the cell's task.
        metric: the cell's metric.
    """
    family = task_family(task)
    return MMLU_FAMILY if not family and metric == primary_metric(MMLU_FAMILY) else family


def digits(metric: str) -> int:
    """Decimals to show: 2 for 0–10 judge scores, 3 for probabilities."""
    return 2 if metric == JUDGE_METRIC else 3


def mark(row: pd.Series, alpha: float) -> str:
    """`*` significant after Holm, `†` after BH only, else ""."""
    if row["is_baseline"]:
        return ""
    if row["significant"]:
        return "*"
    return "†" if np.isfinite(row["p_bh"]) and row["p_bh"] < alpha else ""


def baseline_row(cells: pd.DataFrame, cell: pd.Series) -> pd.Series | None:
    """The multiplier-0 cell a steered cell was compared with (stats records its layer/site/positions).

    Args:
        cells: compute_stats output.
        cell: one steered row of it.
    """
    match = cells[
        cells["is_baseline"]
        & (cells["behaviour"] == cell["behaviour"])
        & (cells["task"] == cell["task"])
        & (cells["metric"] == cell["metric"])
        & (cells["condition"] == cell["condition"])
        & (cells["layer"] == cell["baseline_layer"])
        & (cells["site"] == cell["baseline_site"])
        & (cells["positions"] == cell["baseline_positions"])
    ]
    return None if match.empty else match.iloc[0]


def _entry(cell: pd.Series, alpha: float) -> dict[str, Any]:
    def num(v: Any) -> float | None:
        return float(v) if v is not None and np.isfinite(v) else None

    return {
        "mean": num(cell["mean"]),
        "ci_low": num(cell["ci_low"]),
        "ci_high": num(cell["ci_high"]),
        "n": int(cell["n"]),
        "diff_vs_0": num(cell["diff_vs_0"]),
        "p_holm": num(cell["p_holm"]),
        "p_bh": num(cell["p_bh"]),
        "mark": mark(cell, alpha),
    }


def pivot_tables(cells: pd.DataFrame, alpha: float) -> list[dict[str, Any]]:
    """Paper-shaped tables: one per (task family, metric); rows behaviour [× condition/layer/… that vary],
    columns multiplier (0 = the baseline each row was compared with).

    Args:
        cells: compute_stats output.
        alpha: level of the marks.
    """
    steered = cells[~cells["is_baseline"]].copy()
    steered["family"] = [family_of(t, m) for t, m in zip(steered["task"], steered["metric"])]
    tables = []
    for (family, metric), group in steered.groupby(["family", "metric"], sort=False):
        index = ["behaviour"]
        several_tasks = (group.groupby("behaviour")["task"].nunique() > 1).any()
        if several_tasks or (not family and (group["task"] != group["behaviour"]).any()):
            index.append("task")
        index += [c for c in PANEL_CONFIG if group[c].nunique() > 1]
        multipliers = sorted(set(group["multiplier"]) | {0.0})
        rows = []
        for key, part in group.groupby(index, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            values: dict[str, Any] = {}
            for _, cell in part.iterrows():
                values[format_multiplier(cell["multiplier"])] = _entry(cell, alpha)
                base = baseline_row(cells, cell)
                if base is not None:
                    values.setdefault("0", _entry(base, alpha))
            rows.append({"index": dict(zip(index, key)), "values": values})
        title = FAMILY_TITLES.get(family, f"{family or 'score'} — {metric}")
        if family and metric != primary_metric(family):
            title = f"{title.split(' — ')[0]} — {metric}"
        tables.append(
            {
                "family": family,
                "metric": metric,
                "kind": "mmlu" if family in SHARED_FAMILIES else "behaviour",
                "title": title,
                "index": index,
                "multipliers": [format_multiplier(m) for m in multipliers],
                "digits": digits(metric),
                "rows": rows,
            }
        )
    tables.sort(key=lambda t: (t["kind"] == "mmlu", t["family"], t["metric"]))
    return tables


def _cell_text(entry: dict[str, Any] | None, n_digits: int) -> str:
    if entry is None or entry["mean"] is None:
        return "–"
    ci = "" if entry["ci_low"] is None else f" [{entry['ci_low']:.{n_digits}f}, {entry['ci_high']:.{n_digits}f}]"
    return f"{entry['mean']:.{n_digits}f}{entry['mark']}{ci}"


def md_table(head: list[str], rows: list[list[str]], n_left: int) -> str:
    """A markdown table; the first n_left columns are left-aligned labels, the rest right-aligned numbers."""
    rule = ["---"] * n_left + ["---:"] * (len(head) - n_left)
    return "\n".join("| " + " | ".join(r) + " |" for r in [head, rule, *rows])


def table_markdown(table: dict[str, Any]) -> str:
    """One pivot of pivot_tables (or of report.json's `tables`) as markdown.

    Args:
        table: a pivot dict with index, multipliers, digits and rows.
    """
    rows = [
        [str(row["index"][c]) or "–" for c in table["index"]]
        + [_cell_text(row["values"].get(m), table["digits"]) for m in table["multipliers"]]
        for row in table["rows"]
    ]
    return md_table([*table["index"], *table["multipliers"]], rows, len(table["index"]))


def _fmt(v: Any, n_digits: int = 3, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:+.{n_digits}f}" if signed else f"{v:.{n_digits}f}"


def _p(v: Any) -> str:
    return "–" if v is None or not np.isfinite(v) else ("<1e-4" if v < 1e-4 else f"{v:.4f}")


def _label_columns(df: pd.DataFrame) -> list[str]:
    """Key columns worth showing: not always empty, and task only when it is not just the behaviour."""
    return [
        c for c in GROUP_KEY if not (df[c] == "").all() and not (c == "task" and (df["task"] == df["behaviour"]).all())
    ]


def cells_markdown(cells: pd.DataFrame, alpha: float) -> str:
    """Every cell with every statistic, as markdown.

    Args:
        cells: compute_stats output.
        alpha: level of the marks.
    """
    cols = _label_columns(cells)
    head = [
        *cols,
        "mult",
        "n",
        "mean [95% CI]",
        "diff vs 0 [95% CI]",
        "p Wilcoxon",
        "p perm.",
        "p Holm",
        "p BH",
        "dz",
        "wrong way",
        "MDE",
        "missing",
        "note",
    ]
    rows = []
    for _, c in cells.iterrows():
        d = digits(c["metric"])
        mean = f"{_fmt(c['mean'], d)} [{_fmt(c['ci_low'], d)}, {_fmt(c['ci_high'], d)}]"
        diff = (
            "–"
            if c["is_baseline"]
            else (
                f"{_fmt(c['diff_vs_0'], d, True)}{mark(c, alpha)} "
                f"[{_fmt(c['diff_ci_low'], d, True)}, {_fmt(c['diff_ci_high'], d, True)}]"
            )
        )
        rows.append(
            [
                *(str(c[k]) or "–" for k in cols),
                format_multiplier(c["multiplier"]),
                str(c["n"]),
                mean,
                diff,
                _p(c["p_wilcoxon"]),
                _p(c["p_permutation"]),
                _p(c["p_holm"]),
                _p(c["p_bh"]),
                _fmt(c["cohen_dz"], 2),
                _fmt(c["frac_wrong_way"], 2),
                _fmt(c["mde"], d),
                str(c["n_missing"]),
                c["note"] or "",
            ]
        )
    return md_table(head, rows, len(cols))


def dose_markdown(dose: pd.DataFrame) -> str:
    """The dose-response table as markdown.

    Args:
        dose: compute_dose_response output.
    """
    cols = _label_columns(dose)
    head = [*cols, "multipliers", "items", "mean slope [95% CI]", "Page's L", "p trend", "p trend (Holm)", "direction"]
    rows = []
    for _, r in dose.iterrows():
        slope = f"{_fmt(r['slope'], 4, True)} [{_fmt(r['slope_ci_low'], 4, True)}, {_fmt(r['slope_ci_high'], 4, True)}]"
        rows.append(
            [
                *(str(r[k]) or "–" for k in cols),
                r["multipliers"],
                str(r["n_items"]),
                slope,
                _fmt(r["page_L"], 1),
                _p(r["p_trend"]),
                _p(r["p_trend_holm"]),
                r["trend_direction"] or "–",
            ]
        )
    return md_table(head, rows, len(cols) + 1)


def diagnostics_markdown(diagnostics: list[dict[str, Any]]) -> str:
    """Means of the secondary metrics (not tested), as markdown.

    Args:
        diagnostics: report.json's `diagnostics` rows.
    """
    head = ["behaviour", "task", "metric", "layer", "condition", "mult", "mean", "items"]
    rows = [
        [
            d["behaviour"],
            d["task"],
            d["metric"],
            d["layer"] or "–",
            d["condition"] or "–",
            format_multiplier(d["multiplier"]),
            _fmt(d["mean"]),
            str(d["count"]),
        ]
        for d in diagnostics
    ]
    return md_table(head, rows, 5)
