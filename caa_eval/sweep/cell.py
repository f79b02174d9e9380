"""One cell of a sweep: set the loaded model's steering, run lm-eval into a staging folder, judge the open-ended
samples, write cell.json, then move the folder into cells/ (see `caa_eval.sweep.store` for its life)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from caa_eval import vocab
from caa_eval.files import write_atomic
from caa_eval.sweep import grid
from caa_eval.sweep.config import Condition, SweepConfig
from caa_eval.sweep.plan import Cell
from caa_eval.sweep.store import commit_cell, new_stage, now, sha, to_json

__all__ = ["load_lm", "run_cell", "primary_summary"]

log = logging.getLogger(__name__)


def load_lm(cfg: SweepConfig, cond: Condition, device: str) -> Any:
    """The condition's model as `steered-hf` (unsteered until a cell sets its steering)."""
    from caa_eval.lmeval.model import SteeredHFLM

    kwargs: dict[str, Any] = {
        "pretrained": cond.pretrained or cfg.model,
        "batch_size": cfg.batch_size,
        "device": device,
        "multiplier": 0,
    }
    if cond.peft:
        kwargs["peft"] = cond.peft
    if cfg.dtype:
        kwargs["dtype"] = cfg.dtype
    kwargs.update(cond.model_args)
    log.info("loading %s for condition %s on %s", kwargs["pretrained"], cond.name, device)
    return SteeredHFLM(**kwargs)


def primary_summary(results: dict[str, Any], tasks: Sequence[str]) -> str:
    """`task metric=value` per task for the progress line (the family's primary metric when lm-eval has it)."""
    parts = []
    table = results.get("results", {})
    for task in tasks:
        row = table.get(task, {})
        for metric in (vocab.primary_metric(task), "gen_len", "acc"):
            value = row.get(f"{metric},none")
            if isinstance(value, (int, float)):
                parts.append(f"{task} {metric}={value:.3f}")
                break
    return ", ".join(parts)


def _judge(cfg: SweepConfig, files: list[Path]) -> dict[str, Any]:
    from caa_eval.judge import judge_samples

    js = cfg.judge
    kwargs: dict[str, Any] = {
        "backend": js.backend,
        "judge_model": js.model,
        "concurrency": js.concurrency,
        "batch_size": js.batch_size,
        "rubrics": js.rubrics,
        "base_url": js.base_url,
    }
    if js.cache is False or js.cache is None:
        kwargs["cache_path"] = None  # no score cache
    elif isinstance(js.cache, str):
        kwargs["cache_path"] = js.cache  # else: the judge's default cache
    summary = judge_samples(files, **kwargs)
    return {t.task: {"mean": t.mean, "scored": t.scored, "n": t.n, "missing": t.missing} for t in summary.tasks}


def _model_args(cfg: SweepConfig, cell: Cell, cond: Condition) -> dict[str, Any]:
    """The `model_args` lm-eval records for the cell (what a `--model steered-hf` run of it would say)."""
    model_args: dict[str, Any] = {"pretrained": cond.pretrained or cfg.model}
    if cond.peft:
        model_args["peft"] = cond.peft
    model_args.update(cond.model_args)
    model_args.update(
        {
            "vector": cell.vector,
            "layers": cell.layer,
            "multiplier": cell.multiplier,
            "site": cell.site,
            "positions": cell.positions,
            "behaviour": cell.behaviour,
            "condition": cell.condition,
        }
    )
    return {k: v for k, v in model_args.items() if v is not None}


def run_cell(
    lm: Any,
    cfg: SweepConfig,
    cell: Cell,
    cond: Condition,
    manager: Any,
    run_dir: Path,
    spec: dict[str, Any],
    vectors: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one cell into RUN_DIR/.partial/<id>/, move it to cells/<id>/, then write DONE; return lm-eval's results.

    Args:
        lm: the loaded `SteeredHFLM` of the cell's condition.
        cfg, cell, cond: the sweep config, the cell, its condition.
        manager: lm-eval's TaskManager.
        run_dir: the run folder.
        spec: `cell_spec(...)`, stored with its hash in cell.json.
        vectors: the sweep's loaded vectors (`VectorStore.loaded`), so the file is not read again.
    """
    from caa_eval.lmeval.run import evaluate_to_folder

    started, t0 = now(), time.perf_counter()
    stage = new_stage(run_dir, cell.id)
    lm.set_steering(**grid.steering_args(cell, cond, vectors))
    results, expected = evaluate_to_folder(
        lm,
        list(cell.tasks),
        stage,
        task_manager=manager,
        model_args=_model_args(cfg, cell, cond),
        limit=cfg.limit,
        batch_size=cfg.batch_size,
        system_instruction=cond.system_instruction,
        gen_kwargs=dict(cfg.gen_kwargs) if cfg.gen_kwargs else None,
    )
    date_id = expected[0].stem.removeprefix("results_")
    open_files = sorted(p for t in cell.open_tasks for p in stage.glob(f"samples_{t}_{date_id}.jsonl"))
    info = cell.cell_json() | {
        "cell_id": cell.id,
        "spec_sha256": sha(spec),
        "spec": spec,
        "model": cond.pretrained or cfg.model,
        "peft": cond.peft,
        "system_instruction": cond.system_instruction,
        "limit": cfg.limit,
        "steering_config": lm.steering_config,
        "model_fingerprint": lm.model_fingerprint,
        "results_file": expected[0].name,
        "judged": _judge(cfg, open_files) if open_files else None,
        "started": started,
        "finished": now(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_atomic(stage / "cell.json", to_json(info))
    commit_cell(run_dir, stage, cell.id)
    return results
