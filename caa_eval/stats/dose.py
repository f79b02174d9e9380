"""Dose-response over multipliers: per configuration, the mean per-item OLS slope of the score on the multiplier
with a bootstrap CI, and Page's L trend test (items as blocks, multipliers as ordered treatments)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from caa_eval.stats.cells import Baselines, MissingBaseline, _subjects_or_none
from caa_eval.stats.table import GROUP_KEY, validate_long_table
from caa_eval.stats.tests import adjust_pvalues, floor_p, macro_mean, mean_ci, seeded_rng
from caa_eval.vocab import format_multiplier

__all__ = ["DOSE_COLUMNS", "per_item_slopes", "multiplier_matrix", "compute_dose_response"]

DOSE_COLUMNS = [
    *GROUP_KEY,
    "multipliers",
    "n_items",
    "n_complete",
    "slope",
    "slope_ci_low",
    "slope_ci_high",
    "page_L",
    "p_trend",
    "trend_direction",
    "note",
]


def per_item_slopes(matrix: pd.DataFrame) -> pd.Series:
    """OLS slope of score on multiplier for each item (row); items need ≥2 scored multipliers.

    Args:
        matrix: items × multipliers (columns are the multiplier values), NaN for missing scores.
    """
    levels = np.asarray(matrix.columns, dtype=float)
    values = matrix.to_numpy(dtype=float)
    slopes = np.full(len(matrix), np.nan)
    complete = ~np.isnan(values).any(axis=1)
    if complete.any():
        slopes[complete] = np.polyfit(levels, values[complete].T, 1)[0]
    for i in np.flatnonzero(~complete):
        ok = ~np.isnan(values[i])
        if np.unique(levels[ok]).size >= 2:
            slopes[i] = np.polyfit(levels[ok], values[i, ok], 1)[0]
    return pd.Series(slopes, index=matrix.index)


def _page(complete: np.ndarray) -> tuple[float, float, float]:
    """Page's L (increasing order) and the one-sided p of both orders."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inc = sps.page_trend_test(complete)
        dec = sps.page_trend_test(complete[:, ::-1])
    return float(inc.statistic), float(inc.pvalue), float(dec.pvalue)


def compute_dose_response(
    df: pd.DataFrame, *, seed: int = 0, n_resamples: int = 2000, confidence: float = 0.95
) -> pd.DataFrame:
    """Per configuration (all but the multiplier): mean per-item OLS slope with bootstrap CI, and Page's L.

    Page's trend test treats items as blocks and multipliers (including the 0 baseline) as ordered
    treatments; it is run in both orders and reported two-sided (2 × the smaller one-sided p). Holm over
    all configurations' trend tests is a separate family from the cell-vs-0 tests. Items with a subject give
    the macro mean slope.

    Args:
        df: a long table.
        seed: seed of the bootstrap.
        n_resamples: bootstrap resamples per CI.
        confidence: coverage of the CIs.
    """
    table = validate_long_table(df)
    baselines = Baselines(table)
    subject_of = table.drop_duplicates(["task", "item_id"]).set_index(["task", "item_id"])["subject"]
    out = []
    for group, rows in table[table["multiplier"] != 0].groupby(GROUP_KEY, sort=True):
        group = tuple(group)
        try:
            matrix = multiplier_matrix(rows, baselines.get(group)[0])
        except MissingBaseline:  # listed by compute_stats; no trend without the 0 point
            continue
        rng = seeded_rng(seed, ("dose", *group))
        out.append(dict(zip(GROUP_KEY, group)) | _dose_numbers(matrix, subject_of, group, rng, n_resamples, confidence))
    dose = pd.DataFrame(out, columns=DOSE_COLUMNS)
    dose["p_trend_holm"] = adjust_pvalues(dose["p_trend"].to_numpy())[0] if len(dose) else []
    return dose


def multiplier_matrix(rows: pd.DataFrame, baseline: pd.Series) -> pd.DataFrame:
    """Items × multipliers (sorted; 0 = the baseline's scores) of one configuration, NaN where unscored.

    Args:
        rows: the configuration's steered rows of the long table.
        baseline: its multiplier-0 scores by item_id (cells.Baselines.get).
    """
    steered = rows.pivot(index="item_id", columns="multiplier", values="score")
    matrix = pd.concat([baseline.rename(0.0), steered], axis=1)
    return matrix[sorted(matrix.columns)]


def _dose_numbers(
    matrix: pd.DataFrame,
    subject_of: pd.Series,
    group: tuple,
    rng: np.random.Generator,
    n_resamples: int,
    confidence: float,
) -> dict[str, Any]:
    """The dose-response columns of one configuration from its items × multipliers matrix."""
    slopes = per_item_slopes(matrix).dropna()
    task = dict(zip(GROUP_KEY, group))["task"]
    subj = _subjects_or_none(pd.Series([subject_of.get((task, i), "") for i in slopes.index], dtype=object))
    low, high, note = mean_ci(slopes.to_numpy(), rng, n_resamples, confidence, subjects=subj)
    complete = matrix.dropna().to_numpy(dtype=float)
    stat = p_inc = p_dec = math.nan
    notes = [note] if note else []
    if complete.shape[1] >= 3 and complete.shape[0] >= 2:
        stat, p_inc, p_dec = _page(complete)
        (p_inc, low_inc), (p_dec, low_dec) = floor_p(p_inc, "Page's L"), floor_p(p_dec, "Page's L")
        notes += [low_inc or low_dec] if low_inc or low_dec else []
    else:
        notes.append("Page's L needs ≥3 multipliers (incl. 0) and ≥2 complete items")
    return {
        "multipliers": ",".join(format_multiplier(m) for m in matrix.columns),
        "n_items": int(slopes.size),
        "n_complete": int(complete.shape[0]),
        "slope": macro_mean(slopes.to_numpy(), subj),
        "slope_ci_low": low,
        "slope_ci_high": high,
        "page_L": stat,
        "p_trend": min(1.0, 2 * min(p_inc, p_dec)) if np.isfinite(p_inc) else math.nan,
        "trend_direction": "" if not np.isfinite(p_inc) else ("increasing" if p_inc <= p_dec else "decreasing"),
        "note": "; ".join(notes),
    }
