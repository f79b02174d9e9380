"""CAA's published results (shipped in `reference/`, see its MANIFEST.md) as the reference cells of an experiment.

A reference cell is one (behaviour, layer, multiplier, condition) with CAA's number: for A/B the mean of
p(matching letter)/(p(A)+p(B)); for MMLU and TruthfulQA the per-category mean then the mean over
categories (what the paper's tables use); for open-ended answers the mean GPT-4 score (0-10).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from caa_eval.errors import CAAEvalError
from caa_eval.reproduce.experiments import Experiment

__all__ = ["REFERENCE_DIR", "AB_FILE", "OPEN_FILE", "ReferenceCell", "reference_cells"]

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
AB_FILE = "results_summary_ab_mmlu_tqa.csv"
OPEN_FILE = "open_ended_means.csv"


@dataclass(frozen=True)
class ReferenceCell:
    """One published number and the cell it belongs to."""

    behaviour: str
    layer: int
    multiplier: float
    condition: str
    value: float
    n: int

    @property
    def key(self) -> tuple[str, int, float, str]:
        return (self.behaviour, self.layer, self.multiplier, self.condition)


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise CAAEvalError(f"reference file {path} is missing; reinstall caa-eval (it ships CAA's results)")
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _value(row: dict[str, str], kind: str) -> float:
    if kind == "open_ended":
        return float(row["mean_score"])
    if kind in ("mmlu", "truthful_qa"):
        return float(row["p_category_macro_mean"])
    return float(row["p_mean_repo_formula"])


def _selected(row: dict[str, str], exp: Experiment) -> bool:
    sel = exp.reference
    if row["model_size"] != sel.model_size or int(row["layer"]) not in sel.layers:
        return False
    if float(row["multiplier"]) not in sel.multipliers:
        return False
    if sel.behaviours is not None and row["behavior"] not in sel.behaviours:
        return False
    if sel.kind == "open_ended":
        return True
    if row["type"] != sel.kind or row["override_vector"] != sel.override_vector:
        return False
    if row["override_vector_model"] != sel.override_vector_model:
        return False
    return row["finetuned"] == ""


def reference_cells(exp: Experiment, folder: Path | None = None) -> list[ReferenceCell]:
    """The published cells an experiment reproduces, one per (behaviour, layer, multiplier, condition).

    Args:
        exp: the experiment.
        folder: where the published CSVs are (default: the copies shipped with caa-eval).
    """
    folder = folder or REFERENCE_DIR
    rows = _read(folder / (OPEN_FILE if exp.reference.kind == "open_ended" else AB_FILE))
    by_value = {value: name for name, value in exp.reference.conditions}
    cells: dict[tuple[str, int, float, str], ReferenceCell] = {}
    for row in rows:
        if not _selected(row, exp):
            continue
        column = row.get(exp.reference.condition_column, "")
        if column not in by_value:
            continue
        n = row.get("n") or row.get("n_scored") or "0"
        cell = ReferenceCell(
            row["behavior"],
            int(row["layer"]),
            float(row["multiplier"]),
            by_value[column],
            _value(row, exp.reference.kind),
            int(n),
        )
        if cell.key in cells:
            raise CAAEvalError(f"{folder}: two published rows for {cell.key} in {exp.name}; the reference is ambiguous")
        cells[cell.key] = cell
    return sorted(cells.values(), key=lambda c: (c.condition, c.behaviour, c.layer, c.multiplier))
