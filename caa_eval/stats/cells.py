"""Per-cell statistics: each steered cell against its multiplier-0 baseline on the same items (the
dose-response over multipliers is in `dose`).

Every cell (behaviour, task, metric, layer, site, positions, condition, multiplier) is scored on the same
items as its baseline, so the tests work on per-item differences: item difficulty cancels and 50 items
are enough to see CAA-sized effects. docs/statistics.md explains each column.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from caa_eval.errors import CAAEvalError
from caa_eval.stats.table import (
    BASELINE_CONFIG,
    BASELINE_KEY,
    CELL_KEY,
    CONFIG_KEY,
    GROUP_KEY,
    cell_label,
    validate_long_table,
)
from caa_eval.stats.tests import (
    NOISE,
    TESTS,
    adjust_pvalues,
    macro_mean,
    mde_dz,
    mean_ci,
    paired_tests,
    seeded_rng,
)

__all__ = [
    "BASELINE_TOLERANCE",
    "CELL_COLUMNS",
    "NO_BASELINE",
    "MissingBaseline",
    "warn_no_baseline",
    "require_some_baseline",
    "Baselines",
    "compute_stats",
    "paired_stats",
]

log = logging.getLogger(__name__)

BASELINE_TOLERANCE = 1e-6  # multiplier-0 runs at different layers must agree to this (they steer nothing)
CELL_COLUMNS = [
    *CELL_KEY,
    "is_baseline",
    "n",
    "n_items",
    "n_missing",
    "n_unpaired",
    "n_subjects",
    "mean",
    "ci_low",
    "ci_high",
    "baseline_mean",
    "diff_vs_0",
    "diff_ci_low",
    "diff_ci_high",
    "p_wilcoxon",
    "wilcoxon_method",
    "p_permutation",
    "p_holm",
    "p_bh",
    "significant",
    "cohen_dz",
    "frac_wrong_way",
    "mde",
    "mde_dz",
    *BASELINE_CONFIG,
    "note",
    "sources",
    "baseline_sources",
]


NO_BASELINE = "no baseline"
"""The note of a steered cell that has no multiplier-0 rows to pair with: listed, not tested."""


class MissingBaseline(CAAEvalError):
    """A cell has no multiplier-0 rows of its behaviour/task/metric/condition."""


def _config_label(config: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(CONFIG_KEY, config) if v) or "unsteered"


class Baselines:
    """Multiplier-0 scores for a cell, matched on behaviour/task/metric/condition.

    Steering with multiplier 0 changes nothing, so the baseline does not depend on layer/site/positions:
    rows at the cell's own (layer, site, positions) are used when present; otherwise all multiplier-0
    configurations of that behaviour/task/metric/condition, which must agree per item within
    BASELINE_TOLERANCE (the first configuration in sorted order supplies the values).
    """

    def __init__(self, table: pd.DataFrame):
        zero = table[table["multiplier"] == 0]
        self._by_base: dict[tuple, dict[tuple, pd.DataFrame]] = {}
        for key, rows in zero.groupby(BASELINE_KEY + CONFIG_KEY, sort=True):
            self._by_base.setdefault(tuple(key[:4]), {})[tuple(key[4:])] = rows
        self._cache: dict[tuple, tuple[pd.Series, list[str], tuple[str, ...], str]] = {}

    def get(self, group: tuple) -> tuple[pd.Series, list[str], tuple[str, ...], str]:
        """(scores by item_id, source files, (layer, site, positions) used, note) for a GROUP_KEY tuple.

        Args:
            group: the cell's key without the multiplier.
        """
        keyd = dict(zip(GROUP_KEY, group))
        base = tuple(keyd[k] for k in BASELINE_KEY)
        config = tuple(keyd[k] for k in CONFIG_KEY)
        configs = self._by_base.get(base)
        if not configs:
            raise MissingBaseline(
                f"no multiplier-0 baseline for cell {cell_label(group, GROUP_KEY)}; add multiplier-0 rows for "
                f"behaviour={keyd['behaviour']}, task={keyd['task']}, metric={keyd['metric']}, "
                f"condition={keyd['condition'] or '(none)'}"
            )
        use = [config] if config in configs else sorted(configs)
        cache_key = (base, tuple(use))  # the first config in `use` supplies the values
        if cache_key not in self._cache:
            frames = [configs[c].set_index("item_id")["score"] for c in use]
            merged = pd.concat(frames, axis=1)
            spread = merged.max(axis=1) - merged.min(axis=1)
            if (spread > BASELINE_TOLERANCE).any():
                item = spread[spread > BASELINE_TOLERANCE].index[0]
                raise CAAEvalError(
                    f"multiplier-0 baselines for cell {cell_label(group, GROUP_KEY)} disagree on item {item!r} "
                    f"across layer/site/positions {use}; add a multiplier-0 run at the cell's own layer/site/positions"
                )
            scores = frames[0]
            for other in frames[1:]:
                scores = scores.combine_first(other)
            sources = sorted({s for c in use for s in configs[c]["source"]})
            note = (
                ""
                if config in configs
                else f"baseline from {_config_label(use[0])}" + (f" (+{len(use) - 1} agreeing)" if len(use) > 1 else "")
            )
            self._cache[cache_key] = (scores, sources, use[0], note)
        return self._cache[cache_key]


def _subjects_or_none(subjects: pd.Series) -> np.ndarray | None:
    return None if (subjects == "").all() else subjects.to_numpy(dtype=object)


def _paired(
    row: dict[str, Any],
    scores: pd.Series,
    subjects: pd.Series,
    baselines: Baselines,
    group: tuple,
    multiplier: float,
    rng: np.random.Generator,
    settings: dict[str, Any],
) -> list[str]:
    """Fill the cell-vs-baseline columns of `row`; returns the notes (NO_BASELINE when there is none)."""
    try:
        base, base_sources, base_config, base_note = baselines.get(group)
    except MissingBaseline:
        return [NO_BASELINE]
    common = scores.index.intersection(base.index)
    if common.empty:
        raise CAAEvalError(
            f"cell {cell_label((*group, multiplier))} shares no item_id with its multiplier-0 "
            "baseline; pair the same items"
        )
    pair = pd.DataFrame({"x": scores.loc[common], "b": base.loc[common]})
    ok = pair.notna().all(axis=1)
    d = (pair["x"] - pair["b"])[ok].to_numpy(dtype=float, copy=True)
    d[np.abs(d) <= NOISE] = 0.0  # floating-point noise is a tie, not a direction
    subj = _subjects_or_none(subjects.loc[common][ok])
    n = int(d.size)
    unpaired = int(len(scores.index.symmetric_difference(base.index)))
    notes = [f"{unpaired} item(s) in only one of cell/baseline: dropped"] if unpaired else []
    tests = paired_tests(d, rng, settings["n_permutations"], subjects=subj)
    d_low, d_high, d_note = mean_ci(d, rng, settings["n_resamples"], settings["confidence"], subjects=subj)
    diff = macro_mean(d, subj)
    sd = float(np.std(d, ddof=1)) if n >= 2 else math.nan
    flat = n >= 2 and sd <= NOISE * max(1.0, abs(float(np.mean(d))))
    if flat:
        notes.append("zero variance of differences: dz undefined")
    row.update(
        {
            "n": n,
            "n_missing": int((~ok).sum()),
            "n_unpaired": unpaired,
            "baseline_mean": macro_mean(pair["b"][ok].to_numpy(dtype=float), subj),
            "diff_vs_0": diff,
            "diff_ci_low": d_low,
            "diff_ci_high": d_high,
            "p_wilcoxon": tests.p_wilcoxon,
            "wilcoxon_method": tests.wilcoxon_method,
            "p_permutation": tests.p_permutation,
            "cohen_dz": diff / sd if n >= 2 and not flat else math.nan,
            "frac_wrong_way": float(np.mean(np.sign(d) == -np.sign(multiplier))) if n else math.nan,
            "mde_dz": mde_dz(n, settings["alpha"]),
            "mde": mde_dz(n, settings["alpha"]) * sd if n >= 3 else math.nan,
            "baseline_sources": ";".join(base_sources),
        }
        | dict(zip(BASELINE_CONFIG, base_config))
    )
    return notes + [t for t in (tests.note, d_note, base_note) if t]


def compute_stats(
    df: pd.DataFrame,
    *,
    alpha: float = 0.05,
    seed: int = 0,
    n_resamples: int = 2000,
    n_permutations: int = 9999,
    primary_test: str = "wilcoxon",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per cell: mean with bootstrap CI, and for multiplier≠0 the paired comparison with its baseline.

    The correction family is every cell-vs-0 test in `df` (Holm and BH on the `primary_test` p-values);
    multiplier-0 rows are reported for their mean/CI only. Items with a subject (MMLU) give per-subject
    macro means. Deterministic for a given seed.

    Args:
        df: a long table (see table.validate_long_table).
        alpha: level of the Holm mark (`significant`).
        seed: seed of the bootstrap and permutation resampling.
        n_resamples: bootstrap resamples per CI.
        n_permutations: random sign flips per permutation test.
        primary_test: "wilcoxon" or "permutation": whose p-values are corrected.
        confidence: coverage of the CIs.
    """
    if primary_test not in TESTS:
        raise CAAEvalError(f"unknown test {primary_test!r}; choose {' or '.join(TESTS)}")
    if not 0 < alpha < 1:
        raise CAAEvalError(f"alpha={alpha} must lie strictly between 0 and 1")
    table = validate_long_table(df)
    baselines = Baselines(table)
    settings = {"alpha": alpha, "n_resamples": n_resamples, "n_permutations": n_permutations, "confidence": confidence}
    out = [
        _cell_row(tuple(key), rows, baselines, seeded_rng(seed, tuple(key)), settings)
        for key, rows in table.groupby(CELL_KEY, sort=True)
    ]
    cells = _check_baselines(pd.DataFrame(out), baselines)
    primary = cells[f"p_{primary_test}"].where(~cells["is_baseline"])
    cells["p_holm"], cells["p_bh"] = adjust_pvalues(primary.to_numpy())
    cells["significant"] = cells["p_holm"] < alpha
    cells.attrs.update(
        settings | {"seed": seed, "primary_test": primary_test, "n_tests": int(np.isfinite(primary).sum())}
    )
    return cells[CELL_COLUMNS]


_UNPAIRED = (
    "baseline_mean",
    "diff_vs_0",
    "diff_ci_low",
    "diff_ci_high",
    "p_wilcoxon",
    "p_permutation",
    "cohen_dz",
    "frac_wrong_way",
    "mde",
    "mde_dz",
)


def _cell_row(
    key: tuple, rows: pd.DataFrame, baselines: Baselines, rng: np.random.Generator, settings: dict[str, Any]
) -> dict[str, Any]:
    """One cell's row: its mean with CI, and for a steered cell the paired comparison with its baseline."""
    group, multiplier = key[:-1], float(key[-1])
    indexed = rows.set_index("item_id")
    scores, subjects = indexed["score"], indexed["subject"]
    valid = scores.notna()
    values, subj = scores[valid].to_numpy(dtype=float), _subjects_or_none(subjects[valid])
    low, high, ci_note = mean_ci(values, rng, settings["n_resamples"], settings["confidence"], subjects=subj)
    cell = dict(zip(CELL_KEY, key))
    row: dict[str, Any] = cell | {
        "is_baseline": multiplier == 0,
        "n": int(values.size),
        "n_items": int(values.size),
        "n_missing": int((~valid).sum()),
        "n_unpaired": 0,
        "n_subjects": 0 if subj is None else len(set(subj)),
        "mean": macro_mean(values, subj),
        "ci_low": low,
        "ci_high": high,
        "wilcoxon_method": "",
        **dict.fromkeys(_UNPAIRED, math.nan),
        **{b: cell[c] for b, c in zip(BASELINE_CONFIG, CONFIG_KEY)},
        "sources": ";".join(sorted(set(rows["source"]))),
        "baseline_sources": "",
    }
    notes = [ci_note] if ci_note else []
    if multiplier != 0:
        notes += _paired(row, scores, subjects, baselines, group, multiplier, rng, settings)
    row["note"] = "; ".join(dict.fromkeys(notes))
    return row


def _check_baselines(cells: pd.DataFrame, baselines: Baselines) -> pd.DataFrame:
    """Cells without a baseline are listed (note NO_BASELINE, `attrs["no_baseline"]` names them, and
    `attrs["no_baseline_error"]` says how to fix the first), so that a report never fails after the work."""
    lacking = cells[[NO_BASELINE in str(n).split("; ") for n in cells["note"]]]
    cells.attrs["no_baseline"] = [cell_label(tuple(r)) for r in lacking[CELL_KEY].itertuples(index=False)]
    cells.attrs["no_baseline_error"] = ""
    if len(lacking):
        try:
            baselines.get(tuple(lacking.iloc[0][GROUP_KEY]))
        except MissingBaseline as exc:
            cells.attrs["no_baseline_error"] = str(exc)
    return cells


def require_some_baseline(cells: pd.DataFrame) -> None:
    """Refuse a table in which no steered cell has a baseline: nothing in it can be tested (`caa-eval stats`).

    Args:
        cells: compute_stats output.
    """
    lacking = cells.attrs.get("no_baseline") or []
    if lacking and len(lacking) == int((~cells["is_baseline"].astype(bool)).sum()):
        raise MissingBaseline(cells.attrs["no_baseline_error"])


def warn_no_baseline(cells: pd.DataFrame) -> list[str]:
    """Log one warning line naming the cells compute_stats found without a baseline; returns it (or nothing).

    Args:
        cells: compute_stats output.
    """
    lacking = cells.attrs.get("no_baseline") or []
    if not lacking:
        return []
    line = (
        f"{len(lacking)} steered cell(s) have no multiplier-0 baseline and are listed as '{NO_BASELINE}', "
        f"untested: {'; '.join(lacking)}; run the unsteered cell of their task and condition to test them"
    )
    log.warning("%s", line)
    return [line]


def paired_stats(df: pd.DataFrame, **options: Any) -> pd.DataFrame:
    """The per-cell statistics of a long table: every steered cell paired with its multiplier-0 baseline.

    The public entry point; the same as compute_stats (same options, same result).

    Args:
        df: a long table (one row per item and steering setting).
        **options: alpha, seed, n_resamples, n_permutations, primary_test, confidence (see compute_stats).
    """
    return compute_stats(df, **options)
