"""Our cells against CAA's published ones: reference, ours, difference, our 95% CI and a verdict per cell.

A cell is `reproduced` when |ours - reference| <= tolerance (default 0.05 for probabilities, 0.5 for 0-10
judge scores) or when the reference lies inside our 95% bootstrap CI; otherwise it `differs`. Cells that
only the reference or only the run has are listed, never dropped silently. Our numbers come from the long
table `caa-eval stats` reads (docs/statistics.md): the mean per cell (per-subject macro mean for MMLU),
its CI by `caa_eval.stats.mean_ci` with the per-cell seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from caa_eval import vocab
from caa_eval.reproduce.experiments import Experiment
from caa_eval.reproduce.reference import ReferenceCell
from caa_eval.stats import SHARED_BEHAVIOUR, macro_mean, mean_ci, seeded_rng

__all__ = ["DEFAULT_TOLERANCE", "CellVerdict", "Comparison", "verdict", "compare_table", "default_tolerance"]

DEFAULT_TOLERANCE = {"probability": 0.05, "score": 0.5}
_GROUP = ["behaviour", "task", "layer", "condition", "multiplier"]


def default_tolerance(exp: Experiment) -> float:
    """0.05 for probabilities, 0.5 for 0-10 judge scores (the issue's rule).

    Args:
        exp: the experiment whose metric decides the scale.
    """
    return DEFAULT_TOLERANCE[exp.scale]


def verdict(reference: float, ours: float, ci: tuple[float, float] | None, tolerance: float) -> str:
    """`reproduced` when within the tolerance or the reference is inside our CI, else `differs`.

    Args:
        reference: CAA's number.
        ours: our mean.
        ci: our 95% CI (None or NaN bounds: no CI, only the tolerance counts).
        tolerance: the largest |difference| still counted as reproduced.
    """
    if abs(ours - reference) <= tolerance + 1e-12:
        return "reproduced"
    if ci is not None and not any(math.isnan(b) for b in ci) and ci[0] <= reference <= ci[1]:
        return "reproduced"
    return "differs"


@dataclass
class CellVerdict:
    """One compared cell: the JSON object of `caa-eval reproduce compare`."""

    behaviour: str
    layer: int
    multiplier: float
    condition: str
    metric: str
    reference: float
    ours: float
    difference: float
    ci: tuple[float, float]
    verdict: str
    n: int

    def as_json(self) -> dict[str, Any]:
        ci = [None if math.isnan(b) else round(b, 6) for b in self.ci]
        return {
            "behaviour": self.behaviour,
            "layer": self.layer,
            "multiplier": self.multiplier,
            "condition": self.condition,
            "metric": self.metric,
            "reference": self.reference,
            "ours": round(self.ours, 6),
            "difference": round(self.difference, 6),
            "ci": ci,
            "verdict": self.verdict,
            "n": self.n,
        }


@dataclass
class Comparison:
    """Everything the verdict says about one experiment."""

    experiment: Experiment
    tolerance: float
    cells: list[CellVerdict]
    only_reference: list[ReferenceCell]
    only_run: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reproduced(self) -> int:
        return sum(c.verdict == "reproduced" for c in self.cells)

    @property
    def compared(self) -> int:
        return len(self.cells)


def _our_cells(table: pd.DataFrame, exp: Experiment) -> dict[tuple[Any, ...], pd.DataFrame]:
    """Our cells of the experiment's metric: (behaviour, task, layer, condition, multiplier) -> rows."""
    rows = table[table["metric"] == exp.metric].copy()
    rows["condition"] = rows["condition"].replace("", "none")
    return {key: grp for key, grp in rows.groupby(_GROUP, sort=True)}


def _match(ref: ReferenceCell, exp: Experiment, ours: dict[tuple[Any, ...], pd.DataFrame]) -> tuple[Any, ...] | None:
    """Our cell answering a reference cell; a multiplier-0 cell answers every layer (it steers nothing)."""
    task = exp.task.format(behaviour=vocab.task_suffix(ref.behaviour))
    layer = str(ref.layer)
    if ref.multiplier != 0:
        key = (ref.behaviour, task, layer, ref.condition, ref.multiplier)
        return key if key in ours else None
    candidates = [
        k
        for k in ours
        if k[0] in (ref.behaviour, SHARED_BEHAVIOUR) and k[1] == task and k[3] == ref.condition and k[4] == 0
    ]
    same_layer = [k for k in candidates if k[2] == layer]
    found = same_layer or candidates
    return found[0] if found else None


def _mean_ci(rows: pd.DataFrame, key: tuple[Any, ...], seed: int) -> tuple[float, tuple[float, float], int]:
    scores = rows["score"].astype(float)
    keep = scores.notna().to_numpy()
    x = scores.to_numpy()[keep]
    subjects = rows["subject"].to_numpy()[keep] if "subject" in rows else None
    if x.size == 0:
        return math.nan, (math.nan, math.nan), 0
    low, high, _ = mean_ci(x, seeded_rng(seed, [str(k) for k in key]), subjects=subjects)
    return macro_mean(x, subjects), (low, high), int(x.size)


def compare_table(
    table: pd.DataFrame,
    exp: Experiment,
    reference: list[ReferenceCell],
    tolerance: float | None = None,
    seed: int = 0,
) -> Comparison:
    """Compare every reference cell the run has; list the cells only one side has.

    Args:
        table: the long table (`caa_eval.stats.load_any` of a run folder or CSV).
        exp: the experiment (which task and metric answer the reference).
        reference: its published cells (`reference_cells`).
        tolerance: None = the default for the experiment's scale.
        seed: bootstrap seed for our CIs.
    """
    tol = default_tolerance(exp) if tolerance is None else tolerance
    ours = _our_cells(table, exp)
    used: set[tuple[Any, ...]] = set()
    cells, missing = [], []
    for ref in reference:
        key = _match(ref, exp, ours)
        if key is None:
            missing.append(ref)
            continue
        used.add(key)
        mean, ci, n = _mean_ci(ours[key], key, seed)
        if n == 0:
            missing.append(ref)
            continue
        cells.append(
            CellVerdict(
                ref.behaviour,
                ref.layer,
                ref.multiplier,
                ref.condition,
                exp.metric,
                ref.value,
                mean,
                mean - ref.value,
                ci,
                verdict(ref.value, mean, ci, tol),
                n,
            )
        )
    only_run = [dict(zip(_GROUP, k)) for k in ours if k not in used]
    return Comparison(exp, tol, cells, missing, only_run)
