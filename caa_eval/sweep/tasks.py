"""The lm-eval task side of a sweep: task YAMLs for custom behaviours, the task index, and checking that
every task name exists before any model is loaded."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from caa_eval import vocab
from caa_eval.errors import CAAEvalError
from caa_eval.files import write_atomic
from caa_eval.sweep.config import SweepConfig

__all__ = ["write_custom_tasks", "task_manager", "check_tasks"]


def write_custom_tasks(cfg: SweepConfig, folder: Path) -> list[str]:
    """Task YAMLs for custom behaviours' test files (caa_ab_<name>, caa_open_<name>) on the shipped templates.

    Args:
        cfg: the sweep config.
        folder: where to write them (RUN_DIR/tasks); unchanged files are not rewritten.
    """
    from caa_eval import data

    written = []
    for b in cfg.behaviours:
        for kind, test_file, name in (
            ("ab", b.ab_test, vocab.ab_task_name(b.name)),
            ("open", b.open_test, vocab.open_task_name(b.name)),
        ):
            if test_file is None:
                continue
            lines = [
                f"include: {data.template_path(kind)}",
                f"task: {name}",
                "dataset_kwargs:",
                f"  test_file: {json.dumps(str(test_file.resolve()))}",
                f"  behaviour: {json.dumps(b.name)}",
            ]
            if kind == "ab" and b.pairs is not None:  # a test question that is also a pair stops the run
                lines.append(f"  pairs_file: {json.dumps(str(b.pairs.resolve()))}")
            text = "\n".join(lines) + "\n"
            path = folder / f"{name}.yaml"
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                write_atomic(path, text)
            written.append(name)
    return written


def task_manager(cfg: SweepConfig, generated: Path) -> Any:
    """lm-eval's TaskManager over the shipped tasks, the generated ones and the config's include_path.

    Args:
        cfg: the sweep config (include_path, include_default_tasks, task_metadata and data folders as metadata).
        generated: the folder `write_custom_tasks` wrote to.
    """
    from caa_eval.lmeval.register import ensure_registered

    ensure_registered()
    from lm_eval.tasks import TaskManager

    from caa_eval.paths import tasks_dir

    paths = [str(tasks_dir())]
    if generated.is_dir() and any(generated.glob("*.yaml")):
        paths.append(str(generated))
    paths += [str(p) for p in cfg.include_path]
    metadata = dict(cfg.task_metadata)
    if cfg.caa_data_dir:
        metadata["caa_data_dir"] = str(cfg.caa_data_dir)
    if cfg.mmlu_dir:
        metadata["mmlu_dir"] = str(cfg.mmlu_dir)
    return TaskManager(include_path=paths, include_defaults=cfg.include_default_tasks, metadata=metadata or None)


def check_tasks(cfg: SweepConfig, manager: Any) -> None:
    """Refuse (one line, with the closest known name) any task the index does not have.

    Args:
        cfg: the sweep config.
        manager: `task_manager(...)`'s answer.
    """
    known = set(manager.all_tasks)
    for b in cfg.behaviours:
        for task in cfg.behaviour_tasks(b):
            if task not in known:
                close = difflib.get_close_matches(task, sorted(known), n=1)
                hint = f"did you mean {close[0]!r}?" if close else "see `caa-eval tasks`"
                extra = (
                    " (a custom behaviour needs ab_test/open_test files, or its own task YAML via include_path)"
                    if b.custom
                    else ""
                )
                raise CAAEvalError(
                    f"{cfg.source}: key 'tasks': task {task!r} (behaviour {b.name}) not found{extra}; {hint}"
                )
