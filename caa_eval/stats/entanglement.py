"""The entanglement matrix: what each steering vector does to every task measured under it.

Rows are settings (vector behaviour × condition × layer × multiplier), columns the measured tasks; a cell is
the paired difference vs multiplier 0 on the task's primary metric, from the per-cell statistics
(`compute_stats`), with its paired 95% CI and p. The diagonal (a vector on its own behaviour's task) is the
intended effect, everything else a side effect, so the matrix is its own correction family: Holm over all of
its tests (statsmodels), separate from the report-wide family.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from caa_eval.vocab import behaviour_of_task, task_suffix

__all__ = ["ENTANGLEMENT_KEYS", "entanglement_matrix", "entanglement_records", "is_diagonal"]

log = logging.getLogger(__name__)

ENTANGLEMENT_KEYS = [
    "vector",
    "condition",
    "layer",
    "multiplier",
    "task",
    "metric",
    "n",
    "difference",
    "ci",
    "p",
    "p_holm",
]
"""The keys of one report.json `entanglement` entry."""
_ROW = ["vector", "condition", "layer", "multiplier"]


def is_diagonal(vector: str, task: str) -> bool:
    """A vector measured on its own behaviour's task (`caa_ab_<b>`, `caa_open_<b>`, `caa_demo_<b>_ab`): the
    intended effect, not a side effect.

    Args:
        vector: the steering vector's behaviour.
        task: the measured task.
    """
    return task == vector or f"_{task_suffix(vector)}_".lower() in f"_{task}_".lower()


def _is_cross(vector: str, task: str) -> bool:
    """A vector measured on another behaviour's task: what makes a matrix more than the usual tables."""
    return behaviour_of_task(task) is not None and not is_diagonal(vector, task)


def _one_setting(steered: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The cells of the most common (site, positions): the matrix's row keys leave those out."""
    counts = steered.groupby(["site", "positions"], sort=True).size()
    if len(counts) <= 1:
        return steered, ""
    site, positions = counts.idxmax()
    note = f"entanglement matrix shown for site={site or '-'}, positions={positions or '-'} ({counts.max()} cells)"
    return steered[(steered["site"] == site) & (steered["positions"] == positions)], note


def entanglement_matrix(cells: pd.DataFrame, alpha: float = 0.05, primary_test: str = "wilcoxon") -> pd.DataFrame:
    """One row per (setting, task) of the steered primary-metric cells, with Holm over the matrix.

    Empty unless some vector was measured on another behaviour's task (`cross_tasks`, or such a task listed);
    a vector on its own task and MMLU is already the report's Table 4/5. `attrs["note"]` says which
    site/positions were kept when several were swept.

    Args:
        cells: compute_stats output on primary metrics (one metric per task).
        alpha: level of the `significant` mark (Holm over the matrix).
        primary_test: "wilcoxon" or "permutation": whose p-values are corrected.
    """
    columns = [*ENTANGLEMENT_KEYS[:-3], "ci_low", "ci_high", "p", "p_holm", "significant", "diagonal"]
    steered = cells[~cells["is_baseline"].astype(bool)]
    steered, note = _one_setting(steered)
    if not any(_is_cross(v, t) for v, t in zip(steered["behaviour"], steered["task"])):
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame(
        {
            "vector": steered["behaviour"],
            "condition": steered["condition"],
            "layer": steered["layer"],
            "multiplier": steered["multiplier"].astype(float),
            "task": steered["task"],
            "metric": steered["metric"],
            "n": steered["n"].astype(int),
            "difference": steered["diff_vs_0"].astype(float),
            "ci_low": steered["diff_ci_low"].astype(float),
            "ci_high": steered["diff_ci_high"].astype(float),
            "p": steered[f"p_{primary_test}"].astype(float),
        }
    ).sort_values([*_ROW, "task", "metric"], kind="stable")
    p = out["p"].to_numpy()
    tested = np.isfinite(p)
    holm = np.full(p.shape, np.nan)
    if tested.any():
        holm[tested] = multipletests(p[tested], method="holm")[1]
    out["p_holm"] = holm
    out["significant"] = out["p_holm"] < alpha
    out["diagonal"] = [is_diagonal(v, t) for v, t in zip(out["vector"], out["task"])]
    out.attrs.update({"note": note, "alpha": alpha, "n_tests": int(tested.sum())})
    return out.reset_index(drop=True)[columns]


def _num(v: Any) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def entanglement_records(matrix: pd.DataFrame) -> list[dict[str, Any]]:
    """report.json's `entanglement`: one {ENTANGLEMENT_KEYS} object per matrix cell (NaN -> null).

    Args:
        matrix: entanglement_matrix output.
    """
    return [
        {
            "vector": r.vector,
            "condition": r.condition,
            "layer": r.layer,
            "multiplier": float(r.multiplier),
            "task": r.task,
            "metric": r.metric,
            "n": int(r.n),
            "difference": _num(r.difference),
            "ci": [_num(r.ci_low), _num(r.ci_high)],
            "p": _num(r.p),
            "p_holm": _num(r.p_holm),
        }
        for r in matrix.itertuples(index=False)
    ]
