"""Sweeps: behaviours x conditions x layers x sites x positions x multipliers in one process (docs/sweeps.md).

One YAML file describes the sweep (`config`, checked before any model is loaded); `plan` turns it into
cells (one lm-eval run each; the multiplier-0 baseline once per condition and task); `store` owns the run
folder (lock, manifest, build-then-rename cells, the vector files and CAA's mean-norm normalisation);
`runner` extracts missing vectors, runs the pending cells with one model load per condition, and ends with
`caa_eval.report.build_report`. The folder layout is the one `caa_eval.stats` reads (docs/statistics.md).

    from caa_eval import sweep
    cfg = sweep.load_config("examples/sweep_smollm2.yaml", {"limit": 5})
    result = sweep.run_sweep(cfg)
"""

from caa_eval.sweep.config import (
    CONFIG_KEYS,
    Behaviour,
    Condition,
    JudgeSettings,
    SweepConfig,
    config_from_dict,
    load_config,
)
from caa_eval.sweep.plan import Cell, cell_spec, plan_cells, vector_path
from caa_eval.sweep.runner import SweepResult, run_cell, run_sweep
from caa_eval.sweep.store import FORMAT
from caa_eval.sweep.vector_store import VectorStore

__all__ = [
    "CONFIG_KEYS",
    "FORMAT",
    "Behaviour",
    "Condition",
    "JudgeSettings",
    "SweepConfig",
    "config_from_dict",
    "load_config",
    "Cell",
    "cell_spec",
    "plan_cells",
    "vector_path",
    "SweepResult",
    "VectorStore",
    "run_cell",
    "run_sweep",
]
