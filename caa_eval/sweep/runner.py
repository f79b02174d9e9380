"""Running a sweep in one process: each model is loaded once (per condition) as `steered-hf` and the hooks
are reconfigured per cell (`SteeredHFLM.set_steering`), so a cell costs only its forward passes.

Order: plan -> check tasks -> extract missing vectors (with the already loaded model) -> normalise (CAA) ->
refuse DONE cells computed with another setting -> run the pending cells (lm-eval's own files, open-ended
cells judged right away) -> report. A rerun skips DONE cells; see `caa_eval.sweep.store` for the folder.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caa_eval import vocab
from caa_eval.errors import CAAEvalError
from caa_eval.files import check_output, write_atomic
from caa_eval.lmeval.run import env_info_once
from caa_eval.models import resolve_device
from caa_eval.sweep import grid
from caa_eval.sweep.config import Condition, SweepConfig, normalize_warning
from caa_eval.sweep.finetunes import cell_condition, pending_finetunes, train_finetunes
from caa_eval.sweep.plan import Cell, cell_spec, plan_cells
from caa_eval.sweep.shard import Shard, shard_cells, shared_step
from caa_eval.sweep.store import (
    Manifest,
    RunLock,
    VectorStore,
    cleanup,
    commit_cell,
    is_done,
    new_stage,
    now,
    sha,
    to_json,
)
from caa_eval.sweep.tasks import check_tasks, task_manager, write_custom_tasks

__all__ = ["SweepResult", "run_cell", "run_sweep"]

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What a sweep did: its folder, its cells, which ran now, which were already done, the report."""

    run_dir: Path
    cells: list[Cell]
    ran: list[str]
    skipped: list[str]
    report: Path | None
    seconds: float


def _primary_summary(results: dict[str, Any], tasks: Sequence[str]) -> str:
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


def _load_lm(cfg: SweepConfig, cond: Condition, device: str) -> Any:
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


def run_cell(
    lm: Any, cfg: SweepConfig, cell: Cell, cond: Condition, manager: Any, run_dir: Path, spec: dict[str, Any]
) -> dict[str, Any]:
    """Run one cell into RUN_DIR/.partial/<id>/, move it to cells/<id>/, then write DONE.

    Args:
        lm: the loaded `SteeredHFLM` of the cell's condition.
        cfg: the sweep config.
        cell: the cell to run.
        cond: its condition.
        manager: lm-eval's TaskManager.
        run_dir: the run folder.
        spec: `cell_spec(...)`, stored with its hash in cell.json.

    Returns:
        lm-eval's results (without the samples).
    """
    from caa_eval.lmeval.run import evaluate_to_folder

    started, t0 = now(), time.perf_counter()
    stage = new_stage(run_dir, cell.id)
    lm.set_steering(**grid.steering_args(cell, cond))
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
    model_args = {k: v for k, v in model_args.items() if v is not None}
    results, expected = evaluate_to_folder(
        lm,
        list(cell.tasks),
        stage,
        task_manager=manager,
        model_args=model_args,
        limit=cfg.limit,
        batch_size=cfg.batch_size,
        system_instruction=cond.system_instruction,
        gen_kwargs=dict(cfg.gen_kwargs) if cfg.gen_kwargs else None,
    )
    date_id = expected[0].stem.removeprefix("results_")
    open_files = sorted(p for t in cell.open_tasks for p in stage.glob(f"samples_{t}_{date_id}.jsonl"))
    judged = _judge(cfg, open_files) if open_files else None
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
        "judged": judged,
        "started": started,
        "finished": now(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_atomic(stage / "cell.json", to_json(info))
    commit_cell(run_dir, stage, cell.id)
    return results


def _headline(report_md: Path) -> str:
    """The report's headline sentence and its behaviour/MMLU tables, for the terminal."""
    from caa_eval.report import table_markdown

    report = json.loads((report_md.parent / "report.json").read_text(encoding="utf-8"))
    n_sig = sum(1 for c in report["cells"] if c.get("significant"))
    lines = [
        f"{n_sig} of {report['correction']['n_tests']} steered cells differ significantly from multiplier 0 "
        f"(Holm, alpha={report['settings']['alpha']}); * = significant after Holm, † = after BH only"
    ]
    for t in report["tables"]:
        lines += ["", t["title"], table_markdown(t)]
    return "\n".join(lines)


def _check_done_cells(cfg: SweepConfig, cells: list[Cell], done: set[str], specs: dict[str, dict[str, Any]]) -> None:
    """A DONE cell computed with another setting is refused, never silently mixed with new results."""
    for c in cells:
        if c.id not in done:
            continue
        old = json.loads((cfg.output / "cells" / c.id / "cell.json").read_text(encoding="utf-8"))
        if old.get("spec_sha256") != sha(specs[c.id]):
            changed = sorted(k for k in specs[c.id] if (old.get("spec") or {}).get(k) != specs[c.id][k])
            why = f" (normalize is {str(cfg.normalize).lower()} now)" if changed == ["vector_sha256"] else ""
            raise CAAEvalError(
                f"{cfg.output}/cells/{c.id} was computed with a different setting ({', '.join(changed) or 'spec'}){why}; "
                "use a new output folder (--out), or delete that cell folder to recompute it"
            )


def _dry_run(cfg: SweepConfig, cells: list[Cell], done: set[str], print_fn: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_custom_tasks(cfg, Path(tmp))
        check_tasks(cfg, task_manager(cfg, Path(tmp)))
    store = VectorStore(cfg)
    print_fn(f"sweep {cfg.source} -> {cfg.output}")
    print_fn(
        f"model {cfg.model}; conditions {', '.join(c.name for c in cfg.conditions)}; {len(cells)} cells "
        f"({len(done)} done, {len(cells) - len(done)} to run); limit {cfg.limit}; "
        f"vectors {'normalised (CAA mean norm)' if cfg.normalize else 'raw'}"
    )
    for b, site, layers in store.missing():
        print_fn(f"  extract {b.name} (site {site}) layers {layers} -> {store.raw_path(b, site)}")
    for cond, b in pending_finetunes(cfg):
        print_fn(
            f"  finetune {cond.name}/{b.name} ({cond.finetune['direction']}) -> {cell_condition(cfg, cond, b.name).peft}"
        )
    for c in cells:
        print_fn(f"  [{'done' if c.id in done else 'todo'}] {c.id}: {', '.join(c.tasks)}")


def run_sweep(
    cfg: SweepConfig,
    *,
    dry_run: bool = False,
    progress: bool = True,
    print_fn: Callable[[str], None] = print,
    after_cell: Callable[[Cell], None] | None = None,
    shard: Shard | None = None,
) -> SweepResult:
    """Run (or only plan) a sweep; finished cells are skipped (module docstring).

    Args:
        cfg: the checked config (`load_config` / `config_from_dict`).
        dry_run: print the cells (done / to run) and the vectors to extract; load no model, write nothing.
        progress: show progress bars.
        print_fn: where the summary lines go.
        after_cell: called after each finished cell (tests use it to interrupt).
        shard: run only this shard's cells, in a folder shared with the other shards (caa_eval.sweep.shard).
    """
    t_start = time.perf_counter()
    run_dir = cfg.output
    cells = plan_cells(cfg)
    done = {c.id for c in cells if is_done(run_dir, c.id)}
    conds = {c.name: c for c in cfg.conditions}
    mine = shard_cells(cfg, cells, shard)  # all cells without a shard
    warning = normalize_warning(cfg)
    if warning:
        log.warning("%s", warning)
    if dry_run:
        if shard is not None:
            print_fn(f"shard {shard}: {len(mine)} of the sweep's {len(cells)} cells")
        _dry_run(cfg, mine, done, print_fn)
        return SweepResult(run_dir, cells, [], sorted(done), None, time.perf_counter() - t_start)

    check_output(run_dir, "output", folder=True)  # before any model load (caa_eval.files)
    if cfg.vectors_dir is not None:
        check_output(cfg.vectors_dir, "vectors", folder=True)
    device = resolve_device(cfg.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir, shard):
        wiped = cleanup(run_dir, None if shard is None else {c.id for c in mine})
        if wiped:
            log.warning(
                "removed %d unfinished cell folder(s) from an interrupted run: %s", len(wiped), ", ".join(wiped[:5])
            )
        write_custom_tasks(cfg, run_dir / "tasks")
        manager = task_manager(cfg, run_dir / "tasks")
        check_tasks(cfg, manager)
        manifest = Manifest(run_dir, cfg, cells, sorted(done), shard=shard)
        manifest.save()
        lms: dict[str, Any] = {}
        bar = None
        base_key = Condition().model_key(cfg.model)
        try:
            with shared_step(run_dir, shard, "vector extraction", print_fn):
                store = VectorStore(cfg)
                todo = store.missing()
                if todo:
                    base_cond = next((c for c in cfg.conditions if c.model_key(cfg.model) == base_key), None)
                    if base_cond is not None:
                        lm = lms.setdefault(base_key, _load_lm(cfg, base_cond, device))
                        store.extract(todo, lm.model, lm.tokenizer, progress)
                    else:
                        from caa_eval.models import load_model

                        model, tok = load_model(cfg.model)
                        store.extract(todo, model.to(device), tok, progress)
                        del model, tok
                        gc.collect()
                store.finalize()
            manifest.data["vectors"] = store.info
            specs = {c.id: cell_spec(cfg, c, store.content_sha(c)) for c in cells}
            _check_done_cells(cfg, cells, done, specs)
            pending = [c for c in mine if c.id not in done]
            manifest.save()
            finetunes = pending_finetunes(cfg)  # adapters of finetune conditions, trained once (sweep.finetunes)
            if shard is not None:  # a shard trains only its cells' adapters, each under its own lock
                needed = {(c.condition, c.behaviour) for c in pending}
                finetunes = [(c, b) for c, b in finetunes if (c.name, b.name) in needed]
            if finetunes and any(conds[c.condition].finetune for c in pending):
                lms.clear()  # one model in memory at a time
                gc.collect()
                for batch in [finetunes] if shard is None else [[f] for f in finetunes]:
                    with shared_step(run_dir, shard, f"finetune {batch[0][0].name} {batch[0][1].name}", print_fn):
                        batch = [f for f in batch if shard is None or f in pending_finetunes(cfg)]
                        manifest.data.setdefault("finetunes", {}).update(
                            train_finetunes(cfg, batch, device, progress, print_fn)
                        )
                manifest.save()
            run_cond = {c.id: cell_condition(cfg, conds[c.condition], c.behaviour) for c in pending}

            from tqdm.auto import tqdm

            bar = tqdm(
                total=len(mine),
                initial=len(mine) - len(pending),
                desc="sweep",
                unit="cell",
                disable=not progress,
                dynamic_ncols=True,
                file=sys.stderr,
            )
            with env_info_once():
                keys = [run_cond[c.id].model_key(cfg.model) for c in pending]
                for key in sorted(dict.fromkeys(keys), key=lambda k: k not in lms):  # loaded model first
                    group = [c for c, k in zip(pending, keys) if k == key]
                    if not group:
                        continue
                    for other in [k for k in lms if k != key]:  # one model in memory at a time
                        del lms[other]
                        gc.collect()
                    if key not in lms:
                        lms[key] = _load_lm(cfg, run_cond[group[0].id], device)
                    lm = lms[key]
                    for cell in group:
                        cond = run_cond[cell.id]
                        name = f"{cond.name}/{cell.behaviour}" if cond.finetune else cond.name
                        manifest.data["models"][name] = {
                            "pretrained": cond.pretrained or cfg.model,
                            "peft": cond.peft,
                            "fingerprint": lm.model_fingerprint,
                        }
                    if key == base_key:
                        manifest.data["model_fingerprint"] = lm.model_fingerprint
                    manifest.save()
                    # the grid is planned over every cell of this model, finished ones too, so a resumed sweep
                    # computes each cell in the same batch composition as an uninterrupted one (same numbers)
                    todo_ids = {c.id for c in group}
                    same_model = [
                        c
                        for c in cells
                        if c.id in todo_ids
                        or (
                            c.condition in conds
                            and cell_condition(cfg, conds[c.condition], c.behaviour).model_key(cfg.model) == key
                        )
                    ]
                    for batch in grid.grid_batches(same_model, conds):
                        if not any(c.id in todo_ids for c in batch):
                            continue
                        grid.plan(lm, batch, conds)
                        for cell in (c for c in batch if c.id in todo_ids):
                            bar.set_postfix_str(cell.id, refresh=True)
                            res = run_cell(lm, cfg, cell, run_cond[cell.id], manager, run_dir, specs[cell.id])
                            manifest.run["cells_run"].append(cell.id)
                            bar.write(f"done {cell.id}: {_primary_summary(res, cell.tasks)}")
                            bar.update(1)
                            manifest.save()
                            if after_cell is not None:
                                after_cell(cell)
                    lm.clear_grid()
            lms.clear()
            with contextlib.suppress(OSError):
                (run_dir / ".partial").rmdir()  # only when empty
            manifest.finish("complete")
        except KeyboardInterrupt:
            manifest.finish("interrupted")
            raise
        except BaseException as exc:
            manifest.finish("failed", exc)
            raise
        finally:
            if bar is not None:
                bar.close()

    report_md = None
    if cfg.report and not any(not c.is_baseline for c in cells):
        print_fn("no steered cells (all multipliers are 0): nothing to test, no report")
    elif cfg.report and shard is not None and not all(is_done(run_dir, c.id) for c in cells):
        left = sum(not is_done(run_dir, c.id) for c in cells)
        print_fn(
            f"shard {shard} finished; {left} cell(s) of other shards still to run: the shard that finishes "
            f"last builds the report (or run caa-eval report {run_dir})"
        )
    elif cfg.report:
        from caa_eval.report import build_report

        with shared_step(run_dir, shard, "report", print_fn):
            report_md = build_report(run_dir, run_dir / "report")
        print_fn(f"report: {report_md}")
        print_fn(_headline(report_md))
    seconds = time.perf_counter() - t_start
    ran = list(manifest.run["cells_run"])
    print_fn(
        f"sweep finished in {seconds / 60:.1f} min: {len(ran)} cell(s) run, {len(done)} already done; "
        f"run folder {run_dir}"
    )
    return SweepResult(run_dir, cells, ran, sorted(done), report_md, seconds)
