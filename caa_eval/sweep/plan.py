"""The cell plan: which lm-eval runs a sweep makes, their folder names, and what determines their numbers.

A cell is one `lm_eval.simple_evaluate` call. Multiplier 0 steers nothing, so the baseline does not depend
on layer, site, positions or vector: it runs once per condition and task, names no behaviour, and serves every
vector measured on that task (stats reads it as the shared `*`), A/B, open-ended and MMLU alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caa_eval import vocab
from caa_eval.errors import CAAEvalError
from caa_eval.sweep.config import Behaviour, Condition, SweepConfig

__all__ = ["Cell", "vector_file_name", "vector_path", "plan_cells", "cell_spec"]


@dataclass
class Cell:
    """One lm-eval run: a steering configuration (or the multiplier-0 baseline) on a list of tasks."""

    id: str
    condition: str
    multiplier: float
    tasks: list[str]
    behaviour: str | None = None  # the vector's behaviour; a baseline: None (shared), or a finetune's behaviour
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


def _baseline_cells(cfg: SweepConfig, cond: Condition) -> list[Cell]:
    """Multiplier 0 steers nothing: one run per task is the baseline of every vector measured on it (behaviour
    None, stats' shared '*'). A finetune or system-prompt pos/neg condition has one model or prompt per
    behaviour, so there each behaviour gets its own baseline of each of its tasks."""
    cells = []
    for task in cfg.all_tasks():
        if not cond.per_behaviour:
            cells.append(Cell(id=f"baseline__{cond.name}__{task}", condition=cond.name, multiplier=0.0, tasks=[task]))
            continue
        own = vocab.behaviour_of_task(task, known=[b.name for b in cfg.behaviours])
        for b in cfg.behaviours:
            if task in cfg.behaviour_tasks(b):
                cid = f"baseline__{cond.name}__{task}" if b.name == own else f"baseline__{cond.name}__{b.name}__{task}"
                cells.append(Cell(id=cid, condition=cond.name, multiplier=0.0, tasks=[task], behaviour=b.name))
    return cells


def _steered_cells(cfg: SweepConfig, cond: Condition, b: Behaviour) -> list[Cell]:
    """The behaviour's vector at every layer group, site, position rule and non-zero multiplier (none for a
    vector-only behaviour: it counts in the normalisation and runs nothing)."""
    cells: list[Cell] = []
    if not cfg.behaviour_tasks(b):
        return cells
    from_layer = [] if cfg.vector_layer is None else [f"from{cfg.vector_layer}"]
    for layer, site, positions, m in itertools.product(cfg.layers, cfg.sites, cfg.positions, cfg.multipliers):
        if m == 0:
            continue
        parts = [b.name, cond.name, "L" + "+".join(map(str, layer)), *from_layer, site, _slug(positions)]
        cells.append(
            Cell(
                id="__".join([*parts, "m" + vocab.format_multiplier(m)]),
                condition=cond.name,
                multiplier=m,
                tasks=cfg.behaviour_tasks(b),
                behaviour=b.name,
                layer=layer,
                site=site,
                positions=positions,
                vector=str(vector_path(cfg, b.name, site)),
                vector_layer=cfg.vector_layer,
            )
        )
    return cells


def plan_cells(cfg: SweepConfig) -> list[Cell]:
    """Every cell of the sweep, grouped by condition, baselines first.

    Args:
        cfg: the checked sweep config.
    """
    cells: list[Cell] = []
    for cond in cfg.conditions:
        cells += _baseline_cells(cfg, cond)
        for b in cfg.behaviours:
            cells += _steered_cells(cfg, cond, b)
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
