"""Reproduce CAA's paper with one command and get a verdict against CAA's published results (docs/reproduce.md).

One module per step: `experiments` (the named experiments: shipped sweep configs in `experiments/`, what
they reproduce, known deviations), `reference` (CAA's published aggregated results, shipped in
`reference/` with their source and licence), `run` (an experiment on the sweep runner, with CAA's or
extracted vectors), `estimate` (forward passes, GPU memory and time of a dry run), `compare` (ours vs
CAA's per cell, with our CI and a verdict) and `render` (summary line, text, JSON, markdown).

    from caa_eval import reproduce, stats
    exp = reproduce.get_experiment("ab-7b")
    cmp = reproduce.compare_table(stats.load_any("outputs/reproduce/ab-7b"), exp, reproduce.reference_cells(exp))
    print(reproduce.summary_line(cmp))
"""

from caa_eval.reproduce.compare import (
    DEFAULT_TOLERANCE,
    CellVerdict,
    Comparison,
    compare_table,
    default_tolerance,
    verdict,
)
from caa_eval.reproduce.experiments import CONFIG_DIR, EXPERIMENTS, Experiment, ReferenceSelection, get_experiment
from caa_eval.reproduce.reference import REFERENCE_DIR, ReferenceCell, reference_cells
from caa_eval.reproduce.render import as_json, markdown, summary_line, text_lines

__all__ = [
    "CONFIG_DIR",
    "EXPERIMENTS",
    "Experiment",
    "ReferenceSelection",
    "get_experiment",
    "REFERENCE_DIR",
    "ReferenceCell",
    "reference_cells",
    "DEFAULT_TOLERANCE",
    "CellVerdict",
    "Comparison",
    "compare_table",
    "default_tolerance",
    "verdict",
    "as_json",
    "markdown",
    "summary_line",
    "text_lines",
]
