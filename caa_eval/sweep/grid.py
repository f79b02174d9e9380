"""Which cells of a sweep share one pass: the grid of steering settings a loaded model computes together
(`caa_eval.lmeval.grid`), and the `set_steering` arguments of a cell (one place for the cell run and the plan)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from caa_eval.sweep.entries import Condition
from caa_eval.sweep.plan import Cell

__all__ = ["GRID_MAX_SETTINGS", "steering_args", "grid_batches", "plan"]


def steering_args(cell: Cell, cond: Condition, vectors: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `set_steering` arguments of a cell (one place, used by the cell run and by the grid plan).

    Args:
        cell: the cell.
        cond: its condition.
        vectors: vector file -> loaded `SteeringVector` (`VectorStore.loaded`): the file is read and hashed once
            per sweep, not once per cell and plan.
    """
    if cell.is_baseline:
        return {"vector": None, "multiplier": 0}
    assert cell.vector is not None
    return {
        "vector": vectors[cell.vector] if vectors is not None and cell.vector in vectors else cell.vector,
        "layers": cell.layer,
        "multiplier": cell.multiplier,
        "site": cell.site,
        "positions": cell.positions,
        "allow_fingerprint_mismatch": cond.allow_mismatch,
        "vector_layer": cell.vector_layer,
    }


GRID_MAX_SETTINGS = 64
"""Settings per grid: each costs one short tail per request, also on rows only some cells ask for."""


def grid_batches(group: list[Cell], conds: dict[str, Condition]) -> list[list[Cell]]:
    """Cells of one condition share one prefix pass (all tasks: a request's prefix is computed once for all
    settings, and a cell's extra tails on other cells' rows cost a few tokens each); past GRID_MAX_SETTINGS the
    batches follow the task lists, so tails are not spent on rows a setting never asks for."""
    by_condition: dict[str, list[Cell]] = {}
    for cell in sorted(group, key=lambda c: (c.condition, tuple(c.tasks))):
        by_condition.setdefault(cell.condition, []).append(cell)
    batches = []
    for cells in by_condition.values():
        if len(cells) <= GRID_MAX_SETTINGS:
            batches.append(cells)
            continue
        by_tasks: dict[tuple, list[Cell]] = {}
        for cell in cells:
            by_tasks.setdefault(tuple(cell.tasks), []).append(cell)
        for same in by_tasks.values():
            batches += [same[i : i + GRID_MAX_SETTINGS] for i in range(0, len(same), GRID_MAX_SETTINGS)]
    return batches


def plan(lm: Any, cells: list[Cell], conds: dict[str, Condition], vectors: Mapping[str, Any] | None = None) -> None:
    """One shared-prefix pass for every cell of the batch that CAA's prefix sharing applies to (`vectors`: as in
    `steering_args`)."""
    shareable = [
        c for c in cells if c.is_baseline or (c.positions or "after_instruction") in ("after_instruction", "all")
    ]
    lm.clear_grid()
    if len(shareable) > 1:
        lm.plan_grid(
            [steering_args(c, conds[c.condition], vectors) for c in shareable], tasks=[list(c.tasks) for c in shareable]
        )
