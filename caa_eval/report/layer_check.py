"""Does the cheap layer diagnostic predict the expensive sweep? For a sweep over layers, the Spearman correlation
over layers between each layer's extraction diagnostics (pair consistency, projection AUROC: see
caa_eval.core.diagnostics) and its per-item steerability (mean slope: caa_eval.stats.steerability)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from caa_eval.core.diagnostics import DIAGNOSTICS_KEY
from caa_eval.stats.steerability import Steerability

__all__ = ["MIN_LAYERS", "sweep_diagnostics", "layer_correlations", "layer_check_markdown"]

MIN_LAYERS = 3  # a rank correlation over fewer layers says nothing
_KEY = ["behaviour", "task", "metric", "site", "positions", "condition"]


def sweep_diagnostics(source: Any) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """(behaviour, site) -> {layer: {consistency, auroc}} from the vector files a sweep's cells added.

    Args:
        source: a sweep folder (anything else has no vector files to read: empty answer).
    """
    from caa_eval.core import vectors

    cells = Path(source) / "cells" if isinstance(source, (str, Path)) else None
    found: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    if cells is None or not cells.is_dir():
        return found
    files: dict[tuple[str, str], str] = {}
    for cell_json in sorted(cells.glob("*/cell.json")):
        cell = json.loads(cell_json.read_text(encoding="utf-8"))
        if cell.get("vector") and cell.get("vector_layer") is None:
            files.setdefault((cell["behaviour"], cell.get("site") or ""), cell["vector"])
    for key, path in files.items():
        if Path(path).is_file():
            found[key] = vectors.load(path).extra.get(DIAGNOSTICS_KEY) or {}
    return found


def _spearman(x: list[float], y: list[float]) -> tuple[float | None, float | None]:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, None
    res = sps.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def layer_correlations(steer: Steerability, diagnostics: dict[tuple[str, str], dict[str, dict]]) -> list[dict]:
    """Per (behaviour, task, metric, site, positions, condition) swept over >= MIN_LAYERS single layers that have
    diagnostics: the per-layer numbers and Spearman rho (with p) of consistency and of AUROC against the mean slope.

    Args:
        steer: steerability output.
        diagnostics: sweep_diagnostics output.
    """
    groups: dict[tuple, list[dict]] = {}
    for e in steer.entries:
        diag = diagnostics.get((e["behaviour"], e["site"]), {}).get(e["layer"])
        if diag is not None and e["slope_mean"] is not None:
            groups.setdefault(tuple(e[k] for k in _KEY), []).append(e | diag)
    rows = []
    for key, entries in groups.items():
        if len(entries) < MIN_LAYERS:
            continue
        entries.sort(key=lambda e: int(e["layer"]))
        slope = [e["slope_mean"] for e in entries]
        rho_c, p_c = _spearman([e["consistency"] for e in entries], slope)
        rho_a, p_a = _spearman([e["auroc"] for e in entries], slope)
        rows.append(
            dict(zip(_KEY, key))
            | {
                "layers": [int(e["layer"]) for e in entries],
                "consistency": [e["consistency"] for e in entries],
                "auroc": [e["auroc"] for e in entries],
                "slope_mean": slope,
                "spearman_consistency": rho_c,
                "p_consistency": p_c,
                "spearman_auroc": rho_a,
                "p_auroc": p_a,
            }
        )
    return rows


def _fmt(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.2f}"


def layer_check_markdown(rows: list[dict]) -> list[str]:
    """The report section (empty without a layer sweep that has diagnostics).

    Args:
        rows: layer_correlations output.
    """
    if not rows:
        return []
    lines = [
        "## Which layer: extraction diagnostics against the sweep",
        "",
        "Spearman rank correlation over layers between each layer's pair consistency / projection AUROC "
        "(recorded when the vector was extracted) and its mean per-item slope in this sweep.",
        "",
        "| behaviour | task | layers | rho consistency (p) | rho AUROC (p) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        p_c = "" if r["p_consistency"] is None else f" ({r['p_consistency']:.2g})"
        p_a = "" if r["p_auroc"] is None else f" ({r['p_auroc']:.2g})"
        layers = ",".join(map(str, r["layers"]))
        lines.append(
            f"| {r['behaviour']} | {r['task']} | {layers} | {_fmt(r['spearman_consistency'])}{p_c} | "
            f"{_fmt(r['spearman_auroc'])}{p_a} |"
        )
    return [*lines, ""]
