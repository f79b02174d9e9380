"""Per-item steerability: which items a steering vector moves, which it moves the wrong way, and whether the
movement follows the answer letter instead of the behaviour.

The mean shift of a cell can hide that a large share of items move against the vector. Here every item gets
its own least-squares slope of *propensity* (log-odds of a probability metric, the score itself otherwise)
against the multiplier, over every multiplier at which it has a score (the multiplier-0 baseline included),
and the slopes are summarised per (behaviour, condition, layer, site, positions, task, metric).
docs/statistics.md gives the formulas.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as sps

from caa_eval.errors import CAAEvalError
from caa_eval.stats.cells import Baselines, MissingBaseline
from caa_eval.stats.dose import multiplier_matrix
from caa_eval.stats.table import GROUP_KEY, LETTER_COLUMN, cell_label, validate_long_table
from caa_eval.stats.tests import NOISE, mean_ci, seeded_rng
from caa_eval.vocab import PROBABILITY_METRICS, format_multiplier

__all__ = [
    "CLIP",
    "MIN_MULTIPLIERS",
    "SUMMARY_KEYS",
    "ENTRY_KEYS",
    "GroupFit",
    "Steerability",
    "propensity",
    "fit_items",
    "summarize_slopes",
    "compare_groups",
    "group_fits",
    "steerability",
]

CLIP = 1e-6  # probabilities are clipped to [CLIP, 1 - CLIP] before the log-odds: p of exactly 0 or 1 is finite
MIN_MULTIPLIERS = 3  # distinct multipliers (the 0 baseline included) a slope needs to be more than two points
LETTERS = ("A", "B")
SUMMARY_KEYS = [
    "n_items",
    "slope_mean",
    "slope_mean_ci",
    "slope_median",
    "slope_iqr",
    "anti_steerable_fraction",
    "anti_steerable_ci",
    "significantly_positive_fraction",
    "spearman_mean",
]
_ENTRY_GROUP = ["behaviour", "condition", "layer", "site", "positions", "task", "metric"]
ENTRY_KEYS = [*_ENTRY_GROUP, "n_items", "multipliers", *SUMMARY_KEYS[1:], "by_letter"]


def propensity(scores: np.ndarray | pd.DataFrame, metric: str) -> Any:
    """Log-odds log(p / (1 - p)) of a probability metric (p clipped to [CLIP, 1 - CLIP]), else the score as is.

    Why log-odds: a vector that moves p from 0.50 to 0.55 and one that moves 0.94 to 0.99 make similar
    changes to the model's preference; on the probability scale the second looks three times smaller.

    Args:
        scores: per-item scores (array or items × multipliers frame).
        metric: the long table's metric name (PROBABILITY_METRICS get the log-odds).
    """
    if metric not in PROBABILITY_METRICS:
        return scores
    p = np.clip(scores, CLIP, 1 - CLIP)
    return np.log(p / (1 - p))


def _fit_one(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(OLS slope, one-sided p of slope > 0, Spearman rho) of one item's points."""
    if np.ptp(y) <= NOISE:  # a flat item: no movement, no rank correlation
        return 0.0, 1.0, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sps.linregress(x, y, alternative="greater")
        rho = sps.spearmanr(x, y).statistic
    p = float(fit.pvalue) if np.isfinite(fit.pvalue) else (0.0 if fit.slope > 0 else 1.0)  # exact line: se = 0
    return float(fit.slope), p, float(rho)


def fit_items(matrix: pd.DataFrame) -> pd.DataFrame:
    """Per item (row): slope, p_positive (one-sided t-test of the slope) and Spearman rho of propensity on multiplier.

    Items scored at fewer than MIN_MULTIPLIERS distinct multipliers are left out.

    Args:
        matrix: items × multipliers propensities (columns are the multiplier values), NaN where unscored.
    """
    levels = np.asarray(matrix.columns, dtype=float)
    values = matrix.to_numpy(dtype=float)
    rows = {}
    for item, y in zip(matrix.index, values):
        ok = ~np.isnan(y)
        if np.unique(levels[ok]).size >= MIN_MULTIPLIERS:
            rows[item] = _fit_one(levels[ok], y[ok])
    return pd.DataFrame.from_dict(rows, orient="index", columns=["slope", "p_positive", "spearman"])


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def summarize_slopes(
    fits: pd.DataFrame, rng: np.random.Generator, n_resamples: int = 2000, confidence: float = 0.95, alpha: float = 0.05
) -> dict[str, Any]:
    """The SUMMARY_KEYS numbers of a set of item fits (None where undefined, e.g. no items).

    Args:
        fits: fit_items output.
        rng: the group's generator (bootstrap of the mean slope).
        n_resamples: bootstrap resamples.
        confidence: coverage of both intervals.
        alpha: an item's slope is significantly positive when its one-sided p < alpha.
    """
    from statsmodels.stats.proportion import proportion_confint

    slopes = fits["slope"].to_numpy(dtype=float)
    n = int(slopes.size)
    if n == 0:
        return {k: (0 if k == "n_items" else None) for k in SUMMARY_KEYS}
    low, high, _ = mean_ci(slopes, rng, n_resamples, confidence)
    q1, median, q3 = np.percentile(slopes, [25, 50, 75])
    anti = int((slopes < -NOISE).sum())
    a_low, a_high = proportion_confint(anti, n, alpha=1 - confidence, method="wilson")
    rho = fits["spearman"].to_numpy(dtype=float)
    return {
        "n_items": n,
        "slope_mean": float(slopes.mean()),
        "slope_mean_ci": [_num(low), _num(high)] if np.isfinite(low) else None,
        "slope_median": float(median),
        "slope_iqr": [float(q1), float(q3)],
        "anti_steerable_fraction": anti / n,
        "anti_steerable_ci": [float(a_low), float(a_high)],
        "significantly_positive_fraction": float(np.mean(fits["p_positive"].to_numpy(dtype=float) < alpha)),
        "spearman_mean": float(np.mean(rho[np.isfinite(rho)])) if np.isfinite(rho).any() else None,
    }


def compare_groups(
    fits: pd.DataFrame, labels: pd.Series, values: list[str], rng_key: tuple, settings: dict[str, Any]
) -> dict[str, Any]:
    """The summary per label value plus `difference_p`: Mann-Whitney U (two values) or Kruskal-Wallis (more),
    two-sided, on the items' slopes; None when fewer than two values have items.

    Args:
        fits: fit_items output.
        labels: one label per item (index = item ids; items without a label are left out).
        values: the label values to report, in order (reported even when no item has them).
        rng_key: the group's key, extended per value for each bootstrap's generator.
        settings: seed, n_resamples, confidence, alpha.
    """
    out: dict[str, Any] = {}
    samples = []
    for value in values:
        part = fits[labels.reindex(fits.index).to_numpy() == value]
        rng = seeded_rng(settings["seed"], (*rng_key, value))
        out[value] = summarize_slopes(part, rng, settings["n_resamples"], settings["confidence"], settings["alpha"])
        if len(part):
            samples.append(part["slope"].to_numpy(dtype=float))
    p = math.nan
    if len(samples) >= 2 and np.ptp(np.concatenate(samples)) > NOISE:
        test = sps.mannwhitneyu(*samples, alternative="two-sided") if len(samples) == 2 else sps.kruskal(*samples)
        p = float(test.pvalue)
    out["difference_p"] = _num(p)
    return out


@dataclass
class GroupFit:
    """One (behaviour, task, metric, layer, site, positions, condition): its items' propensity curves and fits."""

    key: dict[str, str]
    propensity: pd.DataFrame  # items × multipliers (0 included), NaN where unscored
    fits: pd.DataFrame  # fit_items(propensity)
    items: pd.DataFrame = field(default_factory=pd.DataFrame)  # per-item columns (matching_letter, split column)


class Steerability(NamedTuple):
    """The JSON entries (key `steerability`), the groups left out and why, and the fits behind the figures."""

    entries: list[dict[str, Any]]
    skipped: list[str]
    groups: list[GroupFit]


def _item_columns(table: pd.DataFrame, task: str, columns: list[str]) -> pd.DataFrame:
    """Per item of `task`: the first non-empty value of each column; an item may not have two values."""
    rows = table[table["task"] == task]
    out = {}
    for col in columns:
        text = rows[col].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip())
        given = rows.assign(_v=text)[text != ""]
        several = given.groupby("item_id")["_v"].nunique()
        if (several > 1).any():
            raise CAAEvalError(
                f"item {several[several > 1].index[0]!r} of task {task!r} has several values of {col!r}; "
                "an item column must have one value per item"
            )
        out[col] = given.groupby("item_id")["_v"].first()
    return pd.DataFrame(out)


def group_fits(table: pd.DataFrame, columns: list[str] | None = None) -> tuple[list[GroupFit], list[str]]:
    """Item fits of every group with at least MIN_MULTIPLIERS multipliers, and a note for each group without.

    Args:
        table: a validated long table.
        columns: item columns to carry along (matching_letter and a --split-by column).
    """
    columns = columns or [LETTER_COLUMN]
    baselines = Baselines(table)
    groups, skipped = [], []
    for group, rows in table[table["multiplier"] != 0].groupby(GROUP_KEY, sort=True):
        group = tuple(group)
        key = dict(zip(GROUP_KEY, group))
        try:
            matrix = multiplier_matrix(rows, baselines.get(group)[0])
        except MissingBaseline:
            skipped.append(f"{cell_label(group, GROUP_KEY)}: no steerability, no multiplier-0 baseline")
            continue
        if matrix.shape[1] < MIN_MULTIPLIERS:
            skipped.append(
                f"{cell_label(group, GROUP_KEY)}: no steerability, only {matrix.shape[1]} multipliers "
                f"({', '.join(format_multiplier(m) for m in matrix.columns)}); a per-item slope needs at least "
                f"{MIN_MULTIPLIERS} (the 0 baseline included): add a multiplier"
            )
            continue
        prop = propensity(matrix, key["metric"])
        fits = fit_items(prop)
        groups.append(GroupFit(key, prop, fits, _item_columns(table, key["task"], columns).reindex(fits.index)))
    return groups, skipped


def _entry(fit: GroupFit, split_by: str | None, settings: dict[str, Any]) -> dict[str, Any]:
    group = tuple(fit.key[k] for k in GROUP_KEY)
    rng = seeded_rng(settings["seed"], ("steerability", *group))
    summary = summarize_slopes(fit.fits, rng, settings["n_resamples"], settings["confidence"], settings["alpha"])
    entry: dict[str, Any] = {k: fit.key[k] for k in _ENTRY_GROUP}
    entry |= summary | {"multipliers": [float(m) for m in fit.propensity.columns]}
    letters = fit.items[LETTER_COLUMN].reindex(fit.fits.index) if LETTER_COLUMN in fit.items else pd.Series()
    if letters.isin(LETTERS).any():
        entry["by_letter"] = compare_groups(fit.fits, letters, list(LETTERS), ("letter", *group), settings)
    entry = {k: entry[k] for k in ENTRY_KEYS if k in entry}
    if split_by and split_by != LETTER_COLUMN and split_by in fit.items:
        labels = fit.items[split_by].dropna()
        values = sorted(labels.unique())
        entry[f"by_{split_by}"] = compare_groups(fit.fits, labels, values, (split_by, *group), settings)
    return entry


def steerability(
    df: pd.DataFrame,
    *,
    split_by: str | None = None,
    seed: int = 0,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    alpha: float = 0.05,
) -> Steerability:
    """Per-item steerability of every group of a long table (see the module docstring and docs/statistics.md).

    Args:
        df: a long table; an optional `matching_letter` column gives `by_letter`.
        split_by: another item column: adds `by_<column>` (the same numbers per value of the column).
        seed: seed of the bootstraps (each group's generator is derived from it and the group's key).
        n_resamples: bootstrap resamples of the mean slope.
        confidence: coverage of the mean-slope and anti-steerable intervals.
        alpha: level at which an item's own slope counts as significantly positive.
    """
    table = validate_long_table(df)
    if split_by is not None and split_by not in table.columns:
        usable = [c for c in df.columns if c not in ("score", "multiplier")]
        raise CAAEvalError(
            f"--split-by {split_by!r}: no such column in the long table; item columns there: {', '.join(usable)}"
        )
    columns = [LETTER_COLUMN] + ([split_by] if split_by and split_by != LETTER_COLUMN else [])
    groups, skipped = group_fits(table, columns)
    settings = {"seed": seed, "n_resamples": n_resamples, "confidence": confidence, "alpha": alpha}
    return Steerability([_entry(g, split_by, settings) for g in groups], skipped, groups)
