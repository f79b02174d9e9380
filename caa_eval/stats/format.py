"""Text and JSON forms of the per-cell and dose-response tables (`caa-eval stats` output)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from caa_eval.stats.steerability import Steerability
from caa_eval.stats.table import DEFAULT_METRIC, GROUP_KEY
from caa_eval.vocab import format_multiplier

__all__ = ["to_records", "stats_json", "format_cells", "format_dose", "format_steerability"]

_OPTIONAL_KEYS = ("task", "metric", "layer", "site", "positions", "condition")


def to_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-safe rows: NaN -> null, numpy scalars -> Python.

    Args:
        df: any table (cells, dose-response, diagnostics).
    """

    def clean(v: Any) -> Any:
        if isinstance(v, (np.bool_, bool)):
            return bool(v)
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, (float, np.floating)):
            return None if not math.isfinite(v) else float(v)
        return v

    return [{k: clean(v) for k, v in rec.items()} for rec in df.to_dict(orient="records")]


def stats_json(
    cells: pd.DataFrame, dose: pd.DataFrame, input_path: str, steer: Steerability | None = None
) -> dict[str, Any]:
    """The `--json` document of `caa-eval stats`: settings, correction family, cells, dose-response, steerability.

    Args:
        cells: compute_stats output (its attrs hold the settings).
        dose: compute_dose_response output.
        input_path: what was read, for the record.
        steer: steerability.steerability output (keys `steerability` and `steerability_skipped`).
    """
    extra = {} if steer is None else {"steerability": steer.entries, "steerability_skipped": steer.skipped}
    return extra | {
        "input": input_path,
        "settings": {
            k: cells.attrs.get(k)
            for k in ("alpha", "seed", "n_resamples", "n_permutations", "primary_test", "confidence")
        },
        "correction": {
            "family": "all cell-vs-multiplier-0 tests in this table",
            "n_tests": cells.attrs.get("n_tests"),
            "methods": ["holm", "fdr_bh"],
            "applied_to": f"p_{cells.attrs.get('primary_test')}",
        },
        "cells": to_records(cells),
        "dose_response": to_records(dose),
    }


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "-"
    return "<1e-4" if p < 1e-4 else f"{p:.4f}"


def _fmt_num(x: float, digits: int = 3) -> str:
    return "-" if not np.isfinite(x) else f"{x:.{digits}f}"


def _fmt_signed(x: float, digits: int = 3) -> str:
    return "-" if not np.isfinite(x) else f"{x:+.{digits}f}"


def _fmt_ci(low: float, high: float, digits: int = 3) -> str:
    return "-" if not (np.isfinite(low) and np.isfinite(high)) else f"[{low:.{digits}f}, {high:.{digits}f}]"


def _constant_keys(view: pd.DataFrame, source: pd.DataFrame) -> list[str]:
    """Key columns that carry no information here: always empty, task = behaviour, or the default metric."""
    return [
        c
        for c in _OPTIONAL_KEYS
        if (view[c] == "").all()
        or (c == "task" and (source["task"] == source["behaviour"]).all())
        or (c == "metric" and (view[c] == DEFAULT_METRIC).all())
    ]


def format_cells(cells: pd.DataFrame) -> str:
    """A readable fixed-width table; columns that never vary (empty site, single metric…) are left out.

    Args:
        cells: compute_stats output.
    """
    view = pd.DataFrame({c: cells[c] for c in GROUP_KEY})
    view["mult"] = cells["multiplier"].map(format_multiplier)
    view["n"] = cells["n"]
    view["mean"] = cells["mean"].map(_fmt_num)
    view["95% CI"] = [_fmt_ci(a, b) for a, b in zip(cells["ci_low"], cells["ci_high"])]
    view["diff"] = cells["diff_vs_0"].map(_fmt_signed)
    view["diff 95% CI"] = [_fmt_ci(a, b) for a, b in zip(cells["diff_ci_low"], cells["diff_ci_high"])]
    view["p_wilcoxon"] = cells["p_wilcoxon"].map(_fmt_p)
    view["p_perm"] = cells["p_permutation"].map(_fmt_p)
    view["p_holm"] = cells["p_holm"].map(_fmt_p)
    view["p_bh"] = cells["p_bh"].map(_fmt_p)
    view["sig"] = ["*" if s else "" for s in cells["significant"]]
    view["dz"] = cells["cohen_dz"].map(lambda v: _fmt_num(v, 2))
    view["wrong"] = cells["frac_wrong_way"].map(lambda v: _fmt_num(v, 2))
    view["mde"] = cells["mde"].map(_fmt_num)
    view["n_miss"] = cells["n_missing"]
    drop = _constant_keys(view, cells)
    if (cells["n_missing"] == 0).all():
        drop.append("n_miss")
    return view.drop(columns=drop).to_string(index=False)


def format_dose(dose: pd.DataFrame) -> str:
    """The dose-response table as fixed-width text.

    Args:
        dose: compute_dose_response output.
    """
    if dose.empty:
        return "(no dose-response: no configuration has a steered multiplier)"
    view = pd.DataFrame({c: dose[c] for c in GROUP_KEY})
    view["multipliers"] = dose["multipliers"]
    view["n"] = dose["n_items"]
    view["slope"] = dose["slope"].map(lambda v: _fmt_signed(v, 4))
    view["slope 95% CI"] = [_fmt_ci(a, b, 4) for a, b in zip(dose["slope_ci_low"], dose["slope_ci_high"])]
    view["Page L"] = dose["page_L"].map(lambda v: _fmt_num(v, 1))
    view["p_trend"] = dose["p_trend"].map(_fmt_p)
    view["p_trend_holm"] = dose["p_trend_holm"].map(_fmt_p)
    view["direction"] = dose["trend_direction"]
    return view.drop(columns=_constant_keys(view, dose)).to_string(index=False)


def _pair(values: list[float | None] | None, digits: int = 3) -> str:
    if not values or values[0] is None or values[1] is None:
        return "-"
    return f"[{values[0]:.{digits}f}, {values[1]:.{digits}f}]"


def format_steerability(steer: Steerability) -> str:
    """The steerability entries as fixed-width text, then the groups left out and why.

    Args:
        steer: steerability.steerability output.
    """
    if not steer.entries:
        lines = ["(no steerability: no configuration has 3 or more multipliers)"]
    else:
        entries = pd.DataFrame(steer.entries)
        view = pd.DataFrame({c: entries[c] for c in GROUP_KEY})
        view["n"] = entries["n_items"]
        view["slope"] = entries["slope_mean"].map(lambda v: _fmt_signed(v, 3))
        view["slope 95% CI"] = entries["slope_mean_ci"].map(_pair)
        view["median"] = entries["slope_median"].map(lambda v: _fmt_signed(v, 3))
        view["IQR"] = entries["slope_iqr"].map(_pair)
        view["anti"] = entries["anti_steerable_fraction"].map(lambda v: _fmt_num(v, 2))
        view["anti 95% CI"] = entries["anti_steerable_ci"].map(lambda v: _pair(v, 2))
        view["sig+"] = entries["significantly_positive_fraction"].map(lambda v: _fmt_num(v, 2))
        view["rho"] = entries["spearman_mean"].map(lambda v: _fmt_num(np.nan if v is None else v, 2))
        by = entries["by_letter"] if "by_letter" in entries else pd.Series([None] * len(entries))
        view["letter p"] = [
            _fmt_p(b["difference_p"]) if isinstance(b, dict) and b["difference_p"] is not None else "-" for b in by
        ]
        lines = [view.drop(columns=_constant_keys(view, entries)).to_string(index=False)]
    return "\n".join(lines + [f"skipped: {why}" for why in steer.skipped])
