"""The scale section of a report (§9.1): every multiplier as a fraction of the residual-stream norm and as
next-token KL on neutral prompts, and every steering effect per unit of KL.

A multiplier alone says little (its meaning depends on the vector's norm, the layer, the site and the
positions); steered-hf records both measures in each results file (`SteeredHFLM.steering_scale`), and this
module puts them next to the effects, so that a residual and an MLP-output intervention, or CAA's positions
and all positions, are compared at equal disruption of the model rather than at equal multiplier.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from caa_eval.report.figures import new_figure, save_png
from caa_eval.report.tables import FAMILY_LABELS, digits, family_of, mark, md_table
from caa_eval.stats import SCALE_KEY, to_records
from caa_eval.vocab import behaviour_of_task, format_multiplier, primary_metric

__all__ = ["effect_per_kl", "scale_markdown", "scale_figures", "scale_records", "MAX_KL_PANELS"]

MAX_KL_PANELS = 16
_CONFIG = ["condition", "behaviour", "layer", "site", "positions"]


def effect_per_kl(cells: pd.DataFrame, scales: pd.DataFrame) -> pd.DataFrame:
    """Each steered primary-metric cell with its setting's norm fraction and KL, and diff vs 0 per nat of KL.

    Args:
        cells: compute_stats output.
        scales: `caa_eval.stats.steering_scales` output.
    """
    columns = [*cells.columns, "norm_fraction", "kl", "diff_per_kl"]
    steered = cells[~cells["is_baseline"]]
    steered = steered[
        [primary_metric(family_of(t, m)) in (None, m) for t, m in zip(steered["task"], steered["metric"])]
    ]
    if steered.empty or scales.empty:
        return pd.DataFrame(columns=columns)
    # a cell's behaviour is the vector that steered it (caa_eval.stats.runs), as in the scale rows
    merged = steered.merge(scales[[*SCALE_KEY, "norm_fraction", "kl"]], how="inner", on=SCALE_KEY)
    kl = merged["kl"].astype(float)
    merged["diff_per_kl"] = np.where(kl > 0, merged["diff_vs_0"].astype(float) / kl.where(kl > 0, 1.0), np.nan)
    return merged[columns].reset_index(drop=True)


def _num(v: Any, fmt: str) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def scale_markdown(scales: pd.DataFrame, per_kl: pd.DataFrame, alpha: float, why_missing: str) -> list[str]:
    """The report's two scale tables (settings × multipliers; effects per unit of KL) as markdown lines.

    Args:
        scales: `steering_scales` output (empty: `why_missing` is said instead).
        per_kl: `effect_per_kl` output.
        alpha: level of the marks.
        why_missing: the sentence shown when no scale is recorded.
    """
    lines = ["## Scale of each multiplier", ""]
    if scales.empty:
        return lines + [why_missing, ""]
    n_prompts = "the shipped neutral prompts"
    lines += [
        "Each steered setting's multiplier as **‖m·v‖ / ‖h‖**, the added vector's norm as a fraction of the mean "
        "residual-stream norm at the steered layer(s), and as **KL**, the mean KL divergence (nats) of the "
        f"next-token distribution at the end of {n_prompts} (ordinary questions, chat template), steered vs "
        "unsteered, with the setting's own site and positions. Recorded by steered-hf in each results file.",
        "",
    ]
    multipliers = sorted(set(scales["multiplier"]))
    rows = []
    for key, part in scales.groupby(_CONFIG, sort=True):
        by_m = {m: r for m, r in zip(part["multiplier"], part.itertuples())}
        rows.append(
            [str(k) or "–" for k in key]
            + [
                (f"{_num(r.norm_fraction, '.3f')} · KL {_num(r.kl, '.3g')}" if (r := by_m.get(m)) is not None else "–")
                for m in multipliers
            ]
        )
    lines += [
        md_table(
            [*_CONFIG[:1], "vector", *_CONFIG[2:], *(format_multiplier(m) for m in multipliers)], rows, len(_CONFIG)
        ),
        "",
    ]
    errors = scales[scales["error"].astype(str) != ""]
    for _, r in errors.iterrows():
        lines.append(
            f"- scale not measured for {r['behaviour']} layer {r['layer']} × {format_multiplier(r['multiplier'])}: "
            f"{r['error']}"
        )
    return lines + _per_kl_markdown(per_kl, alpha)


def _per_kl_markdown(per_kl: pd.DataFrame, alpha: float) -> list[str]:
    """The effect-per-unit-of-KL table (one row per steered cell with a recorded scale)."""
    lines = ["## Effect per unit of KL (sites and positions compared fairly)", ""]
    if per_kl.empty:
        return lines + ["No steered cell could be matched with a recorded scale.", ""]
    lines += [
        "Each steered cell's difference from multiplier 0 next to the KL its setting causes on neutral prompts; "
        "*diff / KL* is the effect per nat of disruption. Settings (sites, positions, layers) that reach the "
        "same effect at a smaller KL steer more selectively. `*` / `†` as in the tables above.",
        "",
    ]
    metric = ["metric"] if per_kl["metric"].nunique() > 1 else []  # tasks without a primary metric show them all
    head = [
        "behaviour",
        "task",
        *metric,
        "condition",
        "layer",
        "site",
        "positions",
        "mult",
        "‖m·v‖/‖h‖",
        "KL (nats)",
        "diff vs 0 [95% CI]",
        "diff / KL",
    ]
    ordered = per_kl.assign(_abs=per_kl["multiplier"].abs()).sort_values(
        ["behaviour", "task", "metric", "condition", "_abs", "multiplier", "site", "positions", "layer"], kind="stable"
    )
    body = [_per_kl_row(c, metric, alpha) for _, c in ordered.iterrows()]
    return lines + [md_table(head, body, 7 + len(metric)), ""]


def _per_kl_row(c: pd.Series, metric: list[str], alpha: float) -> list[Any]:
    d = digits(c["metric"])
    diff = (
        f"{c['diff_vs_0']:+.{d}f}{mark(c, alpha)} [{c['diff_ci_low']:+.{d}f}, {c['diff_ci_high']:+.{d}f}]"
        if math.isfinite(c["diff_vs_0"])
        else "–"
    )
    return [
        c["behaviour"],
        c["task"],
        *(c[m] for m in metric),
        c["condition"] or "–",
        c["layer"] or "–",
        c["site"] or "–",
        c["positions"] or "–",
        format_multiplier(c["multiplier"]),
        _num(c["norm_fraction"], ".3f"),
        _num(c["kl"], ".3g"),
        diff,
        _num(c["diff_per_kl"], "+.3g"),
    ]


def scale_figures(per_kl: pd.DataFrame, out_dir: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Effect against signed KL (KL × the multiplier's sign), a line per (condition, layer, site, positions) in a
    panel per (behaviour, task): sites and positions side by side on the scale of what they do to the model.

    Args:
        per_kl: `effect_per_kl` output.
        out_dir: where the PNG goes.
        notes: report warnings (a note when not every panel fits).
    """
    usable = per_kl[np.isfinite(per_kl["kl"].astype(float))] if not per_kl.empty else per_kl
    if usable.empty:
        return []
    panels = sorted(set(zip(usable["behaviour"], usable["task"], usable["metric"])))
    if len(panels) > MAX_KL_PANELS:
        notes.append(
            f"effect-per-KL figure drawn for {MAX_KL_PANELS} of {len(panels)} behaviour/task panels; "
            "all numbers are in the table"
        )
        panels = panels[:MAX_KL_PANELS]
    fig, axes = new_figure(len(panels))
    for ax, (behaviour, task, metric) in zip(axes, panels):
        mine = usable[(usable["behaviour"] == behaviour) & (usable["task"] == task) & (usable["metric"] == metric)]
        for key, series in mine.groupby(["condition", "layer", "site", "positions"], sort=True):
            x = np.sign(series["multiplier"].astype(float)) * series["kl"].astype(float)
            order = np.argsort(x.to_numpy())
            y = series["diff_vs_0"].astype(float).to_numpy()[order]
            err = np.vstack(
                [
                    y - series["diff_ci_low"].astype(float).to_numpy()[order],
                    series["diff_ci_high"].astype(float).to_numpy()[order] - y,
                ]
            )
            label = ", ".join(str(k) for k in key if k)
            ax.errorbar(
                np.concatenate([[0.0], x.to_numpy()[order]]),
                np.concatenate([[0.0], y]),
                yerr=np.hstack([[[0.0], [0.0]], err]),
                marker="o",
                markersize=3,
                capsize=2,
                label=label,
            )
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.axvline(0, color="grey", linewidth=0.5)
        smallest = mine["kl"].astype(float)
        smallest = smallest[smallest > 0]
        if len(smallest) and smallest.max() / smallest.min() > 20:  # KLs over decades: symmetric log scale
            ax.set_xscale("symlog", linthresh=float(smallest.min()))
        family = family_of(task, metric)
        own_task = task == behaviour or behaviour_of_task(task) == behaviour
        ax.set_title(behaviour if own_task else f"{behaviour}: {task}", fontsize=9)
        ax.set_xlabel("KL on neutral prompts (nats), signed by the multiplier")
        ax.set_ylabel(f"diff vs 0: {FAMILY_LABELS.get(family, metric)}")
        ax.legend(fontsize=6, title="condition, layer, site, positions", title_fontsize=6)
    fig.suptitle("Steering effect per unit of disruption (95% bootstrap CI)", fontsize=10)
    name = "effect_vs_kl.png"
    save_png(fig, out_dir / name)
    return [{"file": name, "kind": "effect_vs_kl", "title": "effect vs KL on neutral prompts", "config": {}}]


def scale_records(scales: pd.DataFrame, per_kl: pd.DataFrame) -> dict[str, Any]:
    """report.json's `scale` entry: the per-setting rows and the per-cell effect per KL."""
    keep = [
        *SCALE_KEY,
        "task",
        "metric",
        "diff_vs_0",
        "diff_ci_low",
        "diff_ci_high",
        "norm_fraction",
        "kl",
        "diff_per_kl",
        "significant",
    ]
    settings = to_records(scales)
    for row in settings:
        row["sources"] = [f for f in str(row["sources"] or "").split(";") if f]
    return {"settings": settings, "effects": to_records(per_kl[keep]) if not per_kl.empty else []}
