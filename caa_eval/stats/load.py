"""One entry for every input the statistics read: a run or sweep folder, or a long-table file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from caa_eval.stats.runs import long_table_from_runs
from caa_eval.stats.table import load_long_table

__all__ = ["load_any"]


def load_any(path: str | Path, metrics: str | Sequence[str] = "primary") -> pd.DataFrame:
    """A folder is read as lm-eval runs or a sweep (see runs.long_table_from_runs), a file as a long table.

    Args:
        path: a sweep folder, an lm_eval --output_path folder, or a CSV/TSV/JSONL long table.
        metrics: for folders: "primary", "all" or a list of metric names.
    """
    path = Path(path)
    if path.is_dir():
        return long_table_from_runs(path, metrics)
    return load_long_table(path)
