"""Running a sweep in one process: each model is loaded once (per condition) as `steered-hf` and the hooks
are reconfigured per cell (`SteeredHFLM.set_steering`), so a cell costs only its forward passes.

Order (one function per phase, over one `SweepRun` state): plan -> lock and clean up -> check tasks -> extract
missing vectors (with the already loaded model) -> normalise (CAA) -> refuse DONE cells computed with another
setting -> train finetune adapters -> per model: plan the grid, run the pending cells (lm-eval's own files,
open-ended cells judged right away) -> manifest -> report. A rerun skips DONE cells; see `caa_eval.sweep.store`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caa_eval.errors import CAAEvalError
from caa_eval.files import check_output
from caa_eval.lmeval.run import env_info_once
from caa_eval.models import resolve_device
from caa_eval.sweep import grid
from caa_eval.sweep.cell import load_lm, primary_summary, run_cell
from caa_eval.sweep.config import Condition, SweepConfig, normalize_warning
from caa_eval.sweep.finetunes import cell_condition, pending_finetunes, train_finetunes
from caa_eval.sweep.plan import Cell, cell_spec, plan_cells
from caa_eval.sweep.shard import Shard, shard_cells, shared_step
from caa_eval.sweep.store import Manifest, RunLock, cleanup, is_done, sha
from caa_eval.sweep.tasks import check_tasks, task_manager, write_custom_tasks
from caa_eval.sweep.vector_store import VectorStore

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


@dataclass
class SweepRun:
    """The state the phases of one `run_sweep` call share."""

    cfg: SweepConfig
    shard: Shard | None
    progress: bool
    print_fn: Callable[[str], None]
    after_cell: Callable[[Cell], None] | None
    cells: list[Cell]
    done: set[str]
    mine: list[Cell]  # this shard's cells (all without a shard)
    device: str = "cpu"
    manager: Any = None  # lm-eval's TaskManager
    manifest: Manifest | None = None
    store: VectorStore | None = None
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: list[Cell] = field(default_factory=list)
    run_cond: dict[str, Condition] = field(default_factory=dict)  # cell id -> the condition it runs under
    lms: dict[str, Any] = field(default_factory=dict)  # model key -> loaded SteeredHFLM (one at a time)
    bar: Any = None

    @property
    def run_dir(self) -> Path:
        return self.cfg.output

    @property
    def conds(self) -> dict[str, Condition]:
        return {c.name: c for c in self.cfg.conditions}

    @property
    def base_key(self) -> str:
        return Condition().model_key(self.cfg.model)

    def save(self) -> None:
        assert self.manifest is not None
        self.manifest.save()


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
            f"  finetune {cond.name}/{b.name} ({(cond.finetune or {}).get('direction')}) -> "
            f"{cell_condition(cfg, cond, b.name).peft}"
        )
    for c in cells:
        print_fn(f"  [{'done' if c.id in done else 'todo'}] {c.id}: {', '.join(c.tasks)}")


# ---------------------------------------------------------------------------------------------- phases


def _open_run(run: SweepRun) -> None:
    """Remove unfinished cell folders of an interrupted run, index the tasks, write the first manifest."""
    wiped = cleanup(run.run_dir, None if run.shard is None else {c.id for c in run.mine})
    if wiped:
        log.warning(
            "removed %d unfinished cell folder(s) from an interrupted run: %s", len(wiped), ", ".join(wiped[:5])
        )
    write_custom_tasks(run.cfg, run.run_dir / "tasks")
    run.manager = task_manager(run.cfg, run.run_dir / "tasks")
    check_tasks(run.cfg, run.manager)
    run.manifest = Manifest(run.run_dir, run.cfg, run.cells, sorted(run.done), shard=run.shard)
    run.save()


def _extract_vectors(run: SweepRun) -> None:
    """Extract missing vectors with the sweep's base model (kept loaded for its cells), then normalise."""
    cfg = run.cfg
    with shared_step(run.run_dir, run.shard, "vector extraction", run.print_fn):
        store = VectorStore(cfg)
        todo = store.missing()
        if todo:
            base_cond = next((c for c in cfg.conditions if c.model_key(cfg.model) == run.base_key), None)
            if base_cond is not None:
                lm = run.lms.setdefault(run.base_key, load_lm(cfg, base_cond, run.device))
                store.extract(todo, lm.model, lm.tokenizer, run.progress, layout=lm.layout)
            else:  # no condition runs the plain base model: load it for extraction only
                from caa_eval.core.layers import ModelLayout
                from caa_eval.models import load_model

                model, tok = load_model(cfg.model)
                layers_path = next(
                    (c.model_args["layers_path"] for c in cfg.conditions if "layers_path" in c.model_args), None
                )
                layout = ModelLayout.of(model, layers_path)  # a model that needs layers_path names it in model_args
                store.extract(todo, model.to(run.device), tok, run.progress, layout=layout)
                del model, tok
                gc.collect()
        store.finalize()
    run.store = store
    assert run.manifest is not None
    run.manifest.data["vectors"] = store.info


def _pending_cells(run: SweepRun) -> None:
    """Every cell's spec (with the hash of the numbers it adds); DONE cells must match theirs."""
    assert run.store is not None
    run.specs = {c.id: cell_spec(run.cfg, c, run.store.content_sha(c)) for c in run.cells}
    _check_done_cells(run.cfg, run.cells, run.done, run.specs)
    run.pending = [c for c in run.mine if c.id not in run.done]
    run.save()


def _train_finetunes(run: SweepRun) -> None:
    """Adapters of finetune conditions, trained once before the cells (one model in memory at a time)."""
    cfg, conds, shard = run.cfg, run.conds, run.shard
    finetunes = pending_finetunes(cfg)
    if shard is not None:  # a shard trains only its cells' adapters, each under its own lock
        needed = {(c.condition, c.behaviour) for c in run.pending}
        finetunes = [(c, b) for c, b in finetunes if (c.name, b.name) in needed]
    if not finetunes or not any(conds[c.condition].finetune for c in run.pending):
        return
    run.lms.clear()
    gc.collect()
    assert run.manifest is not None
    for batch in [finetunes] if shard is None else [[f] for f in finetunes]:
        with shared_step(run.run_dir, shard, f"finetune {batch[0][0].name} {batch[0][1].name}", run.print_fn):
            batch = [f for f in batch if shard is None or f in pending_finetunes(cfg)]
            trained = train_finetunes(cfg, batch, run.device, run.progress, run.print_fn)
            run.manifest.data.setdefault("finetunes", {}).update(trained)
    run.save()


def _model_for(run: SweepRun, key: str, group: list[Cell]) -> Any:
    """The loaded model of `key` (others are dropped first), recorded in the manifest."""
    for other in [k for k in run.lms if k != key]:  # one model in memory at a time
        del run.lms[other]
        gc.collect()
    if key not in run.lms:
        run.lms[key] = load_lm(run.cfg, run.run_cond[group[0].id], run.device)
    lm = run.lms[key]
    assert run.manifest is not None
    for cell in group:
        cond = run.run_cond[cell.id]
        name = f"{cond.name}/{cell.behaviour}" if cond.finetune else cond.name
        run.manifest.data["models"][name] = {
            "pretrained": cond.pretrained or run.cfg.model,
            "peft": cond.peft,
            "fingerprint": lm.model_fingerprint,
        }
    if key == run.base_key:
        run.manifest.data["model_fingerprint"] = lm.model_fingerprint
    run.save()
    return lm


def _same_model_cells(run: SweepRun, key: str, group: list[Cell]) -> list[Cell]:
    """The grid is planned over every cell of this model, finished ones too, so a resumed sweep computes each
    cell in the same batch composition as an uninterrupted one (same numbers)."""
    todo_ids = {c.id for c in group}
    conds = run.conds
    return [
        c
        for c in run.cells
        if c.id in todo_ids
        or (
            c.condition in conds
            and cell_condition(run.cfg, conds[c.condition], c.behaviour).model_key(run.cfg.model) == key
        )
    ]


def _run_model_group(run: SweepRun, key: str, group: list[Cell]) -> None:
    """All pending cells of one model: grid batches planned in turn, cells run one by one."""
    lm = _model_for(run, key, group)
    todo_ids = {c.id for c in group}
    vectors = run.store.loaded if run.store is not None else None
    assert run.manifest is not None
    for batch in grid.grid_batches(_same_model_cells(run, key, group), run.conds):
        if not any(c.id in todo_ids for c in batch):
            continue
        grid.plan(lm, batch, run.conds, vectors)
        for cell in (c for c in batch if c.id in todo_ids):
            run.bar.set_postfix_str(cell.id, refresh=True)
            res = run_cell(
                lm, run.cfg, cell, run.run_cond[cell.id], run.manager, run.run_dir, run.specs[cell.id], vectors
            )
            run.manifest.run["cells_run"].append(cell.id)
            run.bar.write(f"done {cell.id}: {primary_summary(res, cell.tasks)}")
            run.bar.update(1)
            run.save()
            if run.after_cell is not None:
                run.after_cell(cell)
    lm.clear_grid()


def _run_cells(run: SweepRun) -> None:
    """The pending cells, grouped by the model they run on (the already loaded model first)."""
    from tqdm.auto import tqdm

    conds = run.conds
    run.run_cond = {c.id: cell_condition(run.cfg, conds[c.condition], c.behaviour) for c in run.pending}
    run.bar = tqdm(
        total=len(run.mine),
        initial=len(run.mine) - len(run.pending),
        desc="sweep",
        unit="cell",
        disable=not run.progress,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    with env_info_once():
        keys = [run.run_cond[c.id].model_key(run.cfg.model) for c in run.pending]
        for key in sorted(dict.fromkeys(keys), key=lambda k: k not in run.lms):  # loaded model first
            group = [c for c, k in zip(run.pending, keys) if k == key]
            if group:
                _run_model_group(run, key, group)
    run.lms.clear()
    with contextlib.suppress(OSError):
        (run.run_dir / ".partial").rmdir()  # only when empty


def _run_locked(run: SweepRun) -> None:
    """Everything that writes the run folder, under its lock; the manifest records how the run ended."""
    with RunLock(run.run_dir, run.shard):
        _open_run(run)
        assert run.manifest is not None
        try:
            _extract_vectors(run)
            _pending_cells(run)
            _train_finetunes(run)
            _run_cells(run)
            run.manifest.finish("complete")
        except KeyboardInterrupt:
            run.manifest.finish("interrupted")
            raise
        except BaseException as exc:
            run.manifest.finish("failed", exc)
            raise
        finally:
            if run.bar is not None:
                run.bar.close()


def _report(run: SweepRun) -> Path | None:
    """The report, built by whoever finishes the sweep's last cell (one shard, or the only process)."""
    cfg, shard, run_dir, cells = run.cfg, run.shard, run.run_dir, run.cells
    if not cfg.report:
        return None
    if not any(not c.is_baseline for c in cells):
        run.print_fn("no steered cells (all multipliers are 0): nothing to test, no report")
        return None
    if shard is not None and not all(is_done(run_dir, c.id) for c in cells):
        left = sum(not is_done(run_dir, c.id) for c in cells)
        run.print_fn(
            f"shard {shard} finished; {left} cell(s) of other shards still to run: the shard that finishes "
            f"last builds the report (or run caa-eval report {run_dir})"
        )
        return None
    from caa_eval.report import build_report

    with shared_step(run_dir, shard, "report", run.print_fn):
        report_md = build_report(run_dir, run_dir / "report")
    run.print_fn(f"report: {report_md}")
    run.print_fn(_headline(report_md))
    return report_md


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
    cells = plan_cells(cfg)
    done = {c.id for c in cells if is_done(cfg.output, c.id)}
    run = SweepRun(cfg, shard, progress, print_fn, after_cell, cells, done, shard_cells(cfg, cells, shard))
    warning = normalize_warning(cfg)
    if warning:
        log.warning("%s", warning)
    if dry_run:
        if shard is not None:
            print_fn(f"shard {shard}: {len(run.mine)} of the sweep's {len(cells)} cells")
        _dry_run(cfg, run.mine, done, print_fn)
        return SweepResult(cfg.output, cells, [], sorted(done), None, time.perf_counter() - t_start)
    check_output(cfg.output, "output", folder=True)  # before any model load (caa_eval.files)
    if cfg.vectors_dir is not None:
        check_output(cfg.vectors_dir, "vectors", folder=True)
    run.device = resolve_device(cfg.device)
    cfg.output.mkdir(parents=True, exist_ok=True)
    _run_locked(run)
    report_md = _report(run)
    seconds = time.perf_counter() - t_start
    assert run.manifest is not None
    ran = list(run.manifest.run["cells_run"])
    print_fn(
        f"sweep finished in {seconds / 60:.1f} min: {len(ran)} cell(s) run, {len(done)} already done; "
        f"run folder {cfg.output}"
    )
    return SweepResult(cfg.output, cells, ran, sorted(done), report_md, seconds)
