"""The steerability card of a report: per behaviour the mean shift next to the per-item picture (slope,
anti-steerable share, letter bias), a figure of every item's propensity curve with a slope histogram, and one
sentence that says what it means. Numbers: caa_eval.stats.steerability; definitions: docs/statistics.md.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from caa_eval.report.figures import new_figure, save_png
from caa_eval.report.layer_check import layer_check_markdown, layer_correlations, sweep_diagnostics
from caa_eval.stats.steerability import GroupFit, Steerability, steerability
from caa_eval.stats.table import CONFIG_KEY, GROUP_KEY
from caa_eval.vocab import PROBABILITY_METRICS, format_multiplier

__all__ = [
    "STEERABLE_COLOUR",
    "ANTI_COLOUR",
    "MAX_CARD_FIGURES",
    "steerability_sentence",
    "steerability_figure",
    "card_figures",
    "card_markdown",
    "title",
    "steerability_section",
]

STEERABLE_COLOUR = "#0072B2"  # Okabe-Ito blue and vermillion: distinguishable with every common colour blindness
ANTI_COLOUR = "#D55E00"
MAX_CARD_FIGURES = 12


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def steerability_sentence(entry: dict[str, Any]) -> str:
    """One sentence on what an entry means: the anti-steerable share, then the letter bias (when there are letters).

    Args:
        entry: one `steerability` JSON entry.
    """
    n, anti = entry["n_items"], entry["anti_steerable_fraction"]
    if not n:
        return "No item was scored at 3 or more multipliers."
    low, high = entry["anti_steerable_ci"]
    text = f"{_pct(anti)} of items (95% CI {_pct(low)}–{_pct(high)}) move against the vector"
    ci = entry["slope_mean_ci"]
    if ci and ci[0] > 0:
        text += f"; the mean slope is positive ({entry['slope_mean']:+.3f}, 95% CI excludes 0)"
    elif ci and ci[1] < 0:
        text += (
            f"; the mean slope is negative ({entry['slope_mean']:+.3f}, 95% CI excludes 0): the vector lowers the score"
        )
    else:
        text += f"; the mean slope ({entry['slope_mean']:+.3f}) is not distinguishable from 0"
    by = entry.get("by_letter")
    if by and by["difference_p"] is not None and by["A"]["n_items"] and by["B"]["n_items"]:
        p = by["difference_p"]
        if p < 0.05:
            top, low = ("A", "B") if by["A"]["slope_mean"] > by["B"]["slope_mean"] else ("B", "A")
            if by[low]["slope_mean"] < 0 < by[top]["slope_mean"]:
                text += (
                    f"; items whose matching answer is {top} move with the vector and those with {low} against it "
                    f"(letter-bias p = {p:.2g}): the vector moves the answer letter more than the behaviour"
                )
            else:
                text += f"; the effect is carried by items whose matching answer is {top} (letter-bias p = {p:.2g})"
        else:
            text += f"; items whose matching answer is A and B move alike (letter-bias p = {p:.2g})"
    return text + "."


def steerability_figure(fit: GroupFit, title: str, path: Path) -> Path:
    """Every item's propensity against the multiplier (anti-steerable items in vermillion), the item mean on top,
    and the histogram of per-item slopes.

    Args:
        fit: one group's propensities and fits.
        title: the figure's title.
        path: the PNG to write.
    """
    fig, (curves, hist) = new_figure(2)
    levels = np.asarray(fit.propensity.columns, dtype=float)
    anti = fit.fits["slope"] < 0
    for item, row in fit.propensity.loc[fit.fits.index].iterrows():
        colour = ANTI_COLOUR if anti[item] else STEERABLE_COLOUR
        ok = row.notna().to_numpy()
        curves.plot(levels[ok], row.to_numpy(dtype=float)[ok], color=colour, linewidth=0.6, alpha=0.45)
    mean = fit.propensity.loc[fit.fits.index].mean(axis=0).to_numpy(dtype=float)
    curves.plot(levels, mean, color="black", linewidth=2.5, marker="o", label="mean over items")
    curves.plot([], [], color=STEERABLE_COLOUR, label="item, slope ≥ 0")
    curves.plot([], [], color=ANTI_COLOUR, label="item, slope < 0 (anti-steerable)")
    curves.set_xticks(levels, [format_multiplier(m) for m in levels])
    curves.set_xlabel("multiplier")
    log_odds = fit.key["metric"] in PROBABILITY_METRICS
    curves.set_ylabel(f"log-odds of {fit.key['metric']}" if log_odds else fit.key["metric"])
    curves.legend(fontsize=7, loc="best")
    slopes = fit.fits["slope"].to_numpy(dtype=float)
    low, high = float(slopes.min()), float(slopes.max())
    if high - low <= 1e-9 * max(1.0, abs(high)):  # all items alike: one visible bar around the common slope
        low, high = low - 0.5, high + 0.5
    width = (high - low) / min(20, max(5, int(math.sqrt(slopes.size)) * 2))
    bins = (
        np.arange(math.floor(low / width), math.ceil(high / width) + 1) * width
    )  # 0 is a bin edge: bars are one colour
    hist.hist(
        [slopes[slopes < 0], slopes[slopes >= 0]],
        bins=bins,
        stacked=True,
        color=[ANTI_COLOUR, STEERABLE_COLOUR],
        edgecolor="white",
    )
    hist.axvline(0, color="grey", linewidth=0.8)
    hist.set_xlabel("per-item slope (propensity per unit multiplier)")
    hist.set_ylabel("items")
    fig.suptitle(textwrap.fill(title, 110), fontsize=9)
    return save_png(fig, path)


def title(key: dict[str, Any]) -> str:
    """A group as the card names it: behaviour · task · metric · layer=… (empty keys left out)."""
    parts = [key["behaviour"], key["task"] if key["task"] != key["behaviour"] else "", key["metric"]]
    parts += [f"{k}={key[k]}" for k in (*CONFIG_KEY, "condition") if key[k]]
    return " · ".join(p for p in parts if p)


def card_figures(steer: Steerability, out_dir: Path, notes: list[str]) -> list[dict[str, Any]]:
    """One PNG per group (behaviour × task × configuration), at most MAX_CARD_FIGURES.

    Args:
        steer: steerability output.
        out_dir: where the PNGs go.
        notes: report warnings; a note is added when groups go without a figure.
    """
    groups = [g for g in steer.groups if len(g.fits)]
    if len(groups) > MAX_CARD_FIGURES:
        notes.append(f"steerability figures drawn for the first {MAX_CARD_FIGURES} of {len(groups)} groups")
    figures = []
    for number, fit in enumerate(groups[:MAX_CARD_FIGURES], 1):
        name = f"steerability_{number:02d}.png"
        steerability_figure(fit, title(fit.key), out_dir / name)
        figures.append({"file": name, "kind": "steerability", "title": title(fit.key), "group": fit.key})
    return figures


def _shift(cells: pd.DataFrame, entry: dict[str, Any]) -> str:
    """The mean shift the report already shows, at the largest positive multiplier of the entry's group."""
    mine = cells[(cells[GROUP_KEY] == pd.Series({k: entry[k] for k in GROUP_KEY})).all(axis=1)]
    mine = mine[mine["multiplier"] > 0]
    if mine.empty:
        return "-"
    top = mine.loc[mine["multiplier"].idxmax()]
    return f"{top['diff_vs_0']:+.3f} [{top['diff_ci_low']:.3f}, {top['diff_ci_high']:.3f}] at {format_multiplier(top['multiplier'])}"


def card_markdown(steer: Steerability, cells: pd.DataFrame, figures: list[dict[str, Any]]) -> list[str]:
    """The report section: a row per group, its figure and its sentence; the groups left out and why.

    Args:
        steer: steerability output.
        cells: compute_stats output (the mean shift column).
        figures: card_figures output.
    """
    if not steer.entries and not steer.skipped:
        return []
    lines = [
        "## Steerability card (per item)",
        "",
        "Per item, the least-squares slope of its propensity (log-odds for probabilities) on the multiplier; "
        "*anti* = share of items with a negative slope (Wilson 95% CI); *sig+* = share whose own slope is "
        "significantly positive (one-sided t, α = 0.05); *letter p* = Mann–Whitney test of the slopes of items "
        "whose matching answer is A against B. Definitions: docs/statistics.md.",
        "",
        "| group | mean shift vs 0 [95% CI] | items | mean slope [95% CI] | median [IQR] | anti [95% CI] | sig+ "
        "| letter p |",
        "|---|---|---:|---|---|---|---:|---:|",
    ]
    for e in steer.entries:
        by = e.get("by_letter")
        letter_p = f"{by['difference_p']:.3g}" if by and by["difference_p"] is not None else "-"
        ci, iqr, anti = e["slope_mean_ci"] or [math.nan, math.nan], e["slope_iqr"], e["anti_steerable_ci"]
        lines.append(
            f"| {title(e)} | {_shift(cells, e)} | {e['n_items']} | {e['slope_mean']:+.3f} [{ci[0]:.3f}, {ci[1]:.3f}] "
            f"| {e['slope_median']:+.3f} [{iqr[0]:.3f}, {iqr[1]:.3f}] | {e['anti_steerable_fraction']:.2f} "
            f"[{anti[0]:.2f}, {anti[1]:.2f}] | {e['significantly_positive_fraction']:.2f} | {letter_p} |"
        )
    lines.append("")
    by_title = {f["title"]: f["file"] for f in figures}
    for e in steer.entries:
        lines += [f"**{title(e)}.** {steerability_sentence(e)}", ""]
        if title(e) in by_title:
            lines += [f"![steerability: {title(e)}]({by_title[title(e)]})", ""]
    lines += [f"- skipped: {why}" for why in steer.skipped] + ([""] if steer.skipped else [])
    return lines


def steerability_section(
    table: pd.DataFrame,
    cells: pd.DataFrame,
    source: Any,
    out_dir: Path,
    notes: list[str],
    seed: int = 0,
    n_resamples: int = 2000,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Everything the report adds for steerability: (figures, report.json keys, report.md lines).

    Args:
        table: the report's long table.
        cells: compute_stats output (the card's mean-shift column).
        source: the report's input (a sweep folder adds the layer-diagnostics check).
        out_dir: where the PNGs go.
        notes: report warnings.
        seed: seed of the bootstraps.
        n_resamples: bootstrap resamples.
    """
    steer = steerability(table, seed=seed, n_resamples=n_resamples)
    figures = card_figures(steer, out_dir, notes)
    check = layer_correlations(steer, sweep_diagnostics(source))
    records = {"steerability": steer.entries, "steerability_skipped": steer.skipped, "layer_diagnostics": check}
    return figures, records, card_markdown(steer, cells, figures) + layer_check_markdown(check)
