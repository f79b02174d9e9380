"""The cell plan: which lm-eval runs a sweep makes, their folder names, and what determines their numbers.

A cell is one `lm_eval.simple_evaluate` call. Multiplier 0 steers nothing, so the baseline does not depend
on layer, site, positions or vector: it runs once per condition and task. An A/B task's baseline belongs to
its behaviour; a shared task's (MMLU) baseline has no behaviour and serves every vector (stats reads `*`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caa_eval import vocab
from caa_eval.errors import CAAEvalError
from caa_eval.sweep.config import Behaviour, SweepConfig

__all__ = ["Cell", "vector_file_name", "vector_path", "baseline_behaviour", "plan_cells", "cell_spec"]


@dataclass
class Cell:
    """One lm-eval run: a steering configuration (or the multiplier-0 baseline) on a list of tasks."""

    id: str
    condition: str
    multiplier: float
    tasks: list[str]
    behaviour: str | None = None  # the vector's behaviour; for a baseline: the task's behaviour, or None (shared)
    layer: list[int] | None = None
    site: str | None = None
    positions: str | None = None
    vector: str | None = None  # vector file used (None for baselines)
    vector_layer: int | None = None  # the layer whose vector is added at `layer` (layer transfer), None = same layer

    @property
    def is_baseline(self) -> bool:
        return self.multiplier == 0

    @property
    def open_tasks(self) -> list[str]:
        """The open-ended tasks, whose samples are judged right after generation."""
        return [t for t in self.tasks if vocab.task_family(t) == "caa_open"]

    def cell_json(self) -> dict[str, Any]:
        """The keys caa_eval.stats reads (see docs/statistics.md)."""
        return {
            "behaviour": self.behaviour,
            "condition": self.condition,
            "layer": self.layer[0] if self.layer and len(self.layer) == 1 else self.layer,
            "site": self.site,
            "positions": self.positions,
            "multiplier": self.multiplier,
            "tasks": list(self.tasks),
            "vector": self.vector,
            **({"vector_layer": self.vector_layer} if self.vector_layer is not None else {}),
        }


def _slug(text: str) -> str:
    """A folder-safe spelling of a position rule; rules that lose characters get a short hash."""
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")
    if slug != text.replace(":", "_"):
        slug = f"{slug[:24]}_{hashlib.sha256(text.encode()).hexdigest()[:6]}"
    return slug or "x"


def vector_file_name(behaviour: str, site: str) -> str:
    """`<behaviour>.safetensors` for the residual stream, `<behaviour>.<site>.safetensors` otherwise."""
    return f"{behaviour}.safetensors" if site == "residual" else f"{behaviour}.{site}.safetensors"


def vector_path(cfg: SweepConfig, behaviour: str, site: str) -> Path:
    """The vector file a cell adds: the extracted one, or (normalize) its mean-norm rescaled copy in RUN_DIR."""
    folder = cfg.output / "vectors_normalized" if cfg.normalize else cfg.vectors_folder
    return folder / vector_file_name(behaviour, site)


def baseline_behaviour(task: str, behaviours: Sequence[Behaviour]) -> str | None:
    """A behaviour-specific task's baseline belongs to that behaviour; shared tasks get None (stats' '*').

    Args:
        task: an lm-eval task name, e.g. `caa_ab_coordinate_other_ais` or `caa_mmlu_2opt`.
        behaviours: the sweep's behaviours (the answer is one of their names, as written).
    """
    return vocab.behaviour_of_task(task, known=[b.name for b in behaviours])


def plan_cells(cfg: SweepConfig) -> list[Cell]:
    """Every cell of the sweep, grouped by condition, baselines first.

    Args:
        cfg: the checked sweep config.
    """
    cells: list[Cell] = []
    all_tasks = list(dict.fromkeys(t for b in cfg.behaviours for t in cfg.behaviour_tasks(b)))
    for cond in cfg.conditions:
        for task in all_tasks:
            own = baseline_behaviour(task, cfg.behaviours)
            if own is None and cond.per_behaviour:  # each behaviour has its own model/prompt: its own baseline
                for b in cfg.behaviours:
                    if task in cfg.behaviour_tasks(b):
                        cells.append(
                            Cell(
                                id=f"baseline__{cond.name}__{b.name}__{task}",
                                condition=cond.name,
                                multiplier=0.0,
                                tasks=[task],
                                behaviour=b.name,
                            )
                        )
                continue
            cells.append(
                Cell(
                    id=f"baseline__{cond.name}__{task}",
                    condition=cond.name,
                    multiplier=0.0,
                    tasks=[task],
                    behaviour=own,
                )
            )
        for b in cfg.behaviours:
            tasks = cfg.behaviour_tasks(b)
            if not tasks:  # a vector-only behaviour: it counts in the normalisation, runs nothing
                continue
            for layer in cfg.layers:
                for site in cfg.sites:
                    for positions in cfg.positions:
                        for m in cfg.multipliers:
                            if m == 0:
                                continue
                            from_layer = [] if cfg.vector_layer is None else [f"from{cfg.vector_layer}"]
                            cid = "__".join(
                                [
                                    b.name,
                                    cond.name,
                                    "L" + "+".join(map(str, layer)),
                                    *from_layer,
                                    site,
                                    _slug(positions),
                                    "m" + vocab.format_multiplier(m),
                                ]
                            )
                            cells.append(
                                Cell(
                                    id=cid,
                                    condition=cond.name,
                                    multiplier=m,
                                    tasks=tasks,
                                    behaviour=b.name,
                                    layer=layer,
                                    site=site,
                                    positions=positions,
                                    vector=str(vector_path(cfg, b.name, site)),
                                    vector_layer=cfg.vector_layer,
                                )
                            )
    ids = [c.id for c in cells]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CAAEvalError(
            f"{cfg.source}: two cells would share the folder {dup[0]!r}; rename a behaviour or condition"
        )
    return cells


def cell_spec(cfg: SweepConfig, cell: Cell, vector_sha: str | None) -> dict[str, Any]:
    """Everything that determines a cell's numbers; a DONE cell with another spec is not silently reused.

    Args:
        cfg: the sweep config.
        cell: the cell.
        vector_sha: hash of exactly the vector values the cell adds (`VectorStore.content_sha`), None for baselines.
    """
    cond = next(c for c in cfg.conditions if c.name == cell.condition)
    spec = {
        "model": cfg.model,
        "condition": dataclasses.asdict(cond),
        "tasks": cell.tasks,
        "limit": cfg.limit,
        "multiplier": cell.multiplier,
        "layer": cell.layer,
        "site": cell.site,
        "positions": cell.positions,
        "vector_sha256": vector_sha,
        "apply_chat_template": True,
    }
    if cond.system_prompt and cell.behaviour:
        spec["system_prompt_text"] = cond.for_behaviour(cell.behaviour).system_instruction
    if cell.vector_layer is not None:
        spec["vector_layer"] = cell.vector_layer
    if cfg.gen_kwargs:
        spec["gen_kwargs"] = cfg.gen_kwargs
    if cfg.task_metadata:
        spec["task_metadata"] = cfg.task_metadata
    if cell.open_tasks:
        spec["judge"] = {"backend": cfg.judge.backend, "model": cfg.judge.model, "rubrics": cfg.judge.rubrics}
    return spec
