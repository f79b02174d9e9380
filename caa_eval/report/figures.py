"""PNG figures of a report: dose-response per steering configuration and, when several layers were run,
score against layer. Drawn on an Agg canvas without pyplot state, so reports can be built in threads."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pandas as pd

from caa_eval.files import write_atomic
from caa_eval.report.tables import FAMILY_LABELS, MMLU_FAMILY, PANEL_CONFIG, baseline_row, family_of
from caa_eval.stats.table import BASELINE_CONFIG
from caa_eval.vocab import JUDGE_METRIC, behaviour_of_task, format_multiplier, primary_metric

__all__ = ["SERIES_COLOURS", "MAX_DOSE_FIGURES", "new_figure", "save_png", "dose_figures", "layer_figures"]

SERIES_COLOURS = {
    "caa_ab": "tab:blue",
    "caa_ab_balanced": "tab:purple",
    "caa_open": "tab:green",
    MMLU_FAMILY: "tab:red",
    "caa_mmlu_2opt_full": "tab:orange",
    "caa_tqa_2opt": "tab:brown",
}
MAX_DOSE_FIGURES = 12


def new_figure(n_panels: int, width: float = 4.2, height: float = 3.2) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(n_panels, 4)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def save_png(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return write_atomic(path, buf.getvalue())


def _series(cells: pd.DataFrame, steered: pd.DataFrame) -> pd.DataFrame:
    """Steered cells plus the baseline each was compared with, as points (multiplier, mean, CI)."""
    points = [steered[["multiplier", "mean", "ci_low", "ci_high"]]]
    for _, cell in steered.drop_duplicates(["behaviour", "task", "metric", *BASELINE_CONFIG]).iterrows():
        base = baseline_row(cells, cell)
        if base is not None:
            points.append(base[["multiplier", "mean", "ci_low", "ci_high"]].to_frame().T)
    return pd.concat(points).drop_duplicates("multiplier").astype(float).sort_values("multiplier")


def _label(task: str, metric: str, behaviour: str) -> str:
    family = family_of(task, metric)
    name = FAMILY_LABELS.get(family, task if task != behaviour else metric)
    return name if not family or metric == primary_metric(family) else f"{name} {metric}"


def dose_figures(cells: pd.DataFrame, out_dir: Path, notes: list[str]) -> list[dict[str, Any]]:
    """One figure per steering config (condition/layer/site/positions): a panel per behaviour vector with its
    behaviour score(s) and MMLU p(correct) against the multiplier, CI bands — the trade-off in one view.

    Args:
        cells: compute_stats output.
        out_dir: where the PNGs go.
        notes: report warnings; a note is added when not every configuration gets a figure.
    """
    steered = cells[~cells["is_baseline"]]
    configs = (
        steered.groupby(PANEL_CONFIG, sort=True)["multiplier"].nunique().sort_values(ascending=False, kind="stable")
    )
    if len(configs) > MAX_DOSE_FIGURES:
        notes.append(
            f"dose-response figures drawn for the {MAX_DOSE_FIGURES} configurations with most multipliers "
            f"of {len(configs)}; all numbers are in the tables"
        )
    figures = []
    for number, config in enumerate(configs.index[:MAX_DOSE_FIGURES], 1):
        part = steered[(steered[PANEL_CONFIG] == pd.Series(config, index=PANEL_CONFIG)).all(axis=1)]
        behaviours = sorted(set(part["behaviour"]))
        fig, axes = new_figure(len(behaviours))
        for ax, behaviour in zip(axes, behaviours):
            _dose_panel(ax, cells, part[part["behaviour"] == behaviour], behaviour)
        label = ", ".join(f"{k}={v}" for k, v in zip(PANEL_CONFIG, config) if v) or "default configuration"
        fig.suptitle(f"Dose-response with 95% bootstrap CI\n{label}", fontsize=10)
        name = f"dose_{number:02d}.png"
        save_png(fig, out_dir / name)
        figures.append(
            {"file": name, "kind": "dose_response", "config": dict(zip(PANEL_CONFIG, config)), "title": label}
        )
    return figures


def _dose_panel(ax: Any, cells: pd.DataFrame, mine: pd.DataFrame, behaviour: str) -> None:
    """One behaviour vector: a line per (task, metric); judge scores on a right-hand 0–10 axis."""
    twin: Any = None
    for (task, metric), series_cells in mine.groupby(["task", "metric"], sort=True):
        pts = _series(cells, series_cells)
        judge = metric == JUDGE_METRIC
        if judge and twin is None:
            twin = ax.twinx()
            twin.set_ylim(0, 10)
            twin.set_ylabel("judge score (0–10)")
        target = twin if judge else ax
        family = family_of(task, metric)
        colour = SERIES_COLOURS.get(family) if metric == primary_metric(family) else None
        (line,) = target.plot(
            pts["multiplier"],
            pts["mean"],
            marker="o",
            color=colour,
            linestyle="--" if judge else "-",
            label=_label(task, metric, behaviour),
        )
        target.fill_between(pts["multiplier"], pts["ci_low"], pts["ci_high"], alpha=0.2, color=line.get_color())
    ax.axvline(0, color="grey", linewidth=0.5)
    ax.set_title(behaviour)
    ax.set_xlabel("multiplier")
    ax.set_ylabel("mean score")
    handles = ax.get_legend_handles_labels()
    if twin is not None:
        extra = twin.get_legend_handles_labels()
        handles = (handles[0] + extra[0], handles[1] + extra[1])
    ax.legend(*handles, fontsize=7, loc="best")


def _layer_panel(ax: Any, cells: pd.DataFrame, part: pd.DataFrame, behaviour: str, task: str, metric: str) -> None:
    """One behaviour × task panel: a line with its CI band per multiplier, the baseline dotted."""
    mine = part[(part["behaviour"] == behaviour) & (part["task"] == task)]
    for multiplier, series in mine.groupby("multiplier", sort=True):
        series = series.assign(x=series["layer"].astype(int)).sort_values("x")
        (line,) = ax.plot(series["x"], series["mean"], marker="o", markersize=3, label=format_multiplier(multiplier))
        ax.fill_between(
            series["x"],
            series["ci_low"].astype(float),
            series["ci_high"].astype(float),
            alpha=0.2,
            color=line.get_color(),
        )
    base = [
        (int(c["layer"]), b["mean"])
        for _, c in mine.drop_duplicates("layer").iterrows()
        if (b := baseline_row(cells, c)) is not None
    ]
    if base:
        xs, ys = zip(*sorted(base))
        ax.plot(xs, ys, color="black", linestyle=":", label="0 (baseline)")
    own_task = task == behaviour or behaviour_of_task(task) == behaviour
    ax.set_title(behaviour if own_task else f"{behaviour}: {task}")
    ax.set_xlabel("layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(_label(task, metric, behaviour))
    ax.legend(title="multiplier", fontsize=7)


def layer_figures(cells: pd.DataFrame, out_dir: Path, vector_layer: int | None = None) -> list[dict[str, Any]]:
    """Score against layer, one line per multiplier, when a configuration was swept over ≥2 single layers.

    Args:
        cells: compute_stats output.
        out_dir: where the PNGs go.
        vector_layer: the sweep added this layer's vector at every layer: the curve is CAA's layer transfer (§8.2).
    """
    steered = cells[~cells["is_baseline"] & cells["layer"].str.fullmatch(r"\d+")].copy()
    steered["family"] = [family_of(t, m) or t for t, m in zip(steered["task"], steered["metric"])]
    figures = []
    keys = ["family", "metric", "condition", "site", "positions"]
    number = 0
    for key, part in steered.groupby(keys, sort=True):
        if part["layer"].nunique() < 2:
            continue
        panels = sorted(set(zip(part["behaviour"], part["task"])))
        fig, axes = new_figure(len(panels))
        for ax, (behaviour, task) in zip(axes, panels):
            _layer_panel(ax, cells, part, behaviour, task, key[1])
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, key) if v)
        what = (
            "Layer sweep"
            if vector_layer is None
            else f"Layer transfer: the layer-{vector_layer} vector added at each layer"
        )
        fig.suptitle(f"{what}, 95% bootstrap CI\n{label}", fontsize=10)
        number += 1
        name = f"layers_{number:02d}.png"
        save_png(fig, out_dir / name)
        figures.append(
            {
                "file": name,
                "kind": "layer_sweep" if vector_layer is None else "layer_transfer",
                "config": dict(zip(keys, key)),
                "title": label,
                "vector_layer": vector_layer,
            }
        )
    return figures
