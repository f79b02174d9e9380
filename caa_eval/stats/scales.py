"""The recorded scale of every steered setting: steered-hf writes `config.steering.scale` (the vector's norm
as a fraction of the residual stream's, and the KL it causes on neutral prompts) into each results_*.json."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from caa_eval.stats.runs import parse_model_args, read_json, steering_from_cell, steering_from_model_args
from caa_eval.vocab import RESULTS_RE

__all__ = ["labelled_results", "steering_scales", "SCALE_KEY", "SCALE_COLUMNS"]


SCALE_KEY = ["condition", "behaviour", "layer", "site", "positions", "multiplier"]
"""A steering setting as the report labels it; `behaviour` is the vector's behaviour."""
SCALE_COLUMNS = [*SCALE_KEY, "norm_fraction", "kl", "sources", "error"]


def _scale_row(
    labels: dict[str, Any], results: dict[str, Any], results_path: Path, root: Path
) -> dict[str, Any] | None:
    """One setting's recorded scale (steered-hf writes `config.steering.scale`), None when it is not there."""
    scale = ((results.get("config") or {}).get("steering") or {}).get("scale")
    if not isinstance(scale, dict) or labels["multiplier"] == 0:
        return None
    row = {
        "condition": labels["condition"],
        "behaviour": labels["vector_behaviour"],
        "layer": labels["layer"],
        "site": labels["site"],
        "positions": labels["positions"],
        "multiplier": labels["multiplier"],
        "sources": results_path.relative_to(root).as_posix(),
    }
    if "error" in scale:
        return row | {"norm_fraction": math.nan, "kl": math.nan, "error": str(scale["error"])}
    return row | {"norm_fraction": float(scale["norm_fraction"]), "kl": float(scale["kl"]), "error": ""}


def labelled_results(run_dir: str | Path) -> Iterator[tuple[Path, dict[str, Any], dict[str, Any], dict | None]]:
    """Every results_*.json with the steering labels of its run: a sweep's finished cells (labels from cell.json),
    else every results file of an lm_eval output folder (labels from its model_args).

    Args:
        run_dir: the sweep folder or lm_eval --output_path folder.

    Yields:
        (results path, results, labels, the cell's cell.json or None outside a sweep).
    """
    root = Path(run_dir)
    cells_dir = root / "cells"
    if cells_dir.is_dir():
        for cell_dir in sorted(p for p in cells_dir.iterdir() if (p / "DONE").exists() and (p / "cell.json").is_file()):
            cell = read_json(cell_dir / "cell.json")
            labels = steering_from_cell(cell, str(cell_dir / "cell.json"))
            for path in sorted(p for p in cell_dir.rglob("*.json") if RESULTS_RE.match(p.name)):
                yield path, read_json(path), labels, cell
        return
    for path in sorted(p for p in root.rglob("*.json") if RESULTS_RE.match(p.name)):
        results = read_json(path)
        args = parse_model_args((results.get("config") or {}).get("model_args"))
        yield path, results, steering_from_model_args(args, results, str(path)), None


def steering_scales(run_dir: str | Path) -> pd.DataFrame:
    """The scale of every steered setting in a sweep or run folder (one row per setting, `SCALE_KEY` columns +
    norm_fraction, kl, sources (`;`-joined results files that recorded it), error), from what steered-hf recorded
    in each results_*.json. Runs without a record (other models, older caa-eval) give no row.

    Args:
        run_dir: the sweep folder or lm_eval --output_path folder.
    """
    root = Path(run_dir)
    rows = [_scale_row(labels, results, path, root) for path, results, labels, _ in labelled_results(root)]
    found = [r for r in rows if r is not None]
    if not found:
        return pd.DataFrame(columns=SCALE_COLUMNS)
    table = pd.DataFrame.from_records(found, columns=SCALE_COLUMNS)
    sources = table.groupby(SCALE_KEY, sort=False)["sources"].agg(";".join)
    table = table.drop_duplicates(SCALE_KEY).set_index(SCALE_KEY)
    table["sources"] = sources
    return table.reset_index()[SCALE_COLUMNS]
