"""The shipped tasks and where their data comes from (what `caa-eval tasks` shows), and the base templates.

The task list comes from lm-eval's own index of the task folder (the public `TaskManager`), so it shows
exactly the names `lm_eval --tasks` accepts; each task's data is then located the way its loader will.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caa_eval.data.items import load_ab_items, load_open_items
from caa_eval.data.locate import locate_caa_data, locate_mmlu, resolve_behaviour_pairs
from caa_eval.data.mmlu import mmlu_subset_size, read_mmlu_subject
from caa_eval.data.tqa import TQA_FILE, tqa_rows
from caa_eval.errors import CAAEvalError
from caa_eval.paths import tasks_dir

__all__ = ["TEMPLATES", "TaskInfo", "template_path", "list_tasks", "shipped_task_names"]

TEMPLATES = {
    "ab": "caa_ab/_caa_ab_template_yaml",
    "balanced": "caa_ab_balanced/_caa_ab_balanced_template_yaml",
    "open": "caa_open/_caa_open_template_yaml",
}
"""Template kind -> base template under the task folder, for `include:` in a user's task YAML."""


def template_path(kind: str = "ab") -> Path:
    """Absolute path of a shipped base template.

    Args:
        kind: `ab`, `balanced` or `open`.
    """
    if kind not in TEMPLATES:
        raise CAAEvalError(f"unknown template {kind!r}; choose from {', '.join(TEMPLATES)}")
    return tasks_dir() / TEMPLATES[kind]


@dataclass(frozen=True)
class TaskInfo:
    """One shipped task or group as `caa-eval tasks` shows it."""

    name: str
    items: int | None  # None when the data is missing
    source: str  # data file/folder (and why it was chosen), or "missing: <how to get it>"
    group: str = ""  # parent group, "" for top level
    subtasks: int = 0  # > 0 for groups


def _data_file(
    kwargs: dict[str, Any], split: str, yaml_path: Path | None, caa_dir: str | Path | None
) -> tuple[Path, str]:
    """The file a task's loader will read, and where it came from (as `caa_eval.lmeval.tasks` resolves it)."""
    if kwargs.get("test_file"):  # a file named by the YAML, relative to it
        path = Path(kwargs["test_file"]).expanduser()
        path = path if path.is_absolute() or yaml_path is None else yaml_path.parent / path
        if not path.is_file():
            raise CAAEvalError(f"data file {path} not found (named in the task YAML {yaml_path})")
        return path, f"{path} (task YAML)"
    path = resolve_behaviour_pairs(kwargs["caa_behaviour"], split, caa_dir)
    return path, f"{path} ({locate_caa_data(caa_dir).source})"


def _describe(
    cfg: dict[str, Any], yaml_path: Path | None, caa_dir: str | Path | None, mmlu_dir: str | Path | None
) -> tuple[int | None, str]:
    """(item count, data source) of one task config; (None, "missing: ...") when its data is not found."""
    loader = str(cfg.get("custom_dataset", "")).rpartition(".")[2]
    kwargs = cfg.get("dataset_kwargs") or {}
    try:
        if loader == "load_open":
            path, where = _data_file(kwargs, "open_ended", yaml_path, caa_dir)
            return len(load_open_items(path)), where
        if loader in ("load_ab", "load_ab_balanced"):
            path, where = _data_file(kwargs, "test", yaml_path, caa_dir)
            items = load_ab_items(path, non_ab="exclude", balanced=loader == "load_ab_balanced", warn=False)
            note = f" [{len(items.excluded)} non-A/B left out]" if items.excluded else ""
            return len(items.rows), where + note
        if loader in ("load_mmlu_2opt", "load_mmlu_2opt_full"):
            loc = locate_mmlu(mmlu_dir)
            subject = kwargs["mmlu_subject"]
            n = len(read_mmlu_subject(subject, mmlu_dir))
            if loader == "load_mmlu_2opt":
                n = mmlu_subset_size(subject)
            return n, f"{loc.path / f'{subject}_test.csv'} ({loc.source})"
        if loader == "load_tqa_2opt":
            caa = locate_caa_data(caa_dir)
            return len(tqa_rows(kwargs["tqa_category"], 0, caa_dir)), f"{caa.path / TQA_FILE} ({caa.source})"
    except CAAEvalError as exc:
        return None, f"missing: {exc}"
    return None, f"(data defined by the task YAML: {loader or 'dataset_path'})"


def list_tasks(caa_dir: str | Path | None = None, mmlu_dir: str | Path | None = None) -> list[TaskInfo]:
    """Every group and task in the shipped task folder, with item counts and where the data comes from.

    Groups come first, each followed by its member tasks; tasks outside any group come last.

    Args:
        caa_dir: explicit CAA datasets folder (else $CAA_EVAL_DATA_DIR, then the user cache).
        mmlu_dir: explicit MMLU CSV folder (else $CAA_EVAL_MMLU_DIR, then the user cache).
    """
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    index = manager.task_index  # name -> entry with the YAML's config (includes resolved) and path
    out: list[TaskInfo] = []
    grouped: set[str] = set()
    for name in sorted(manager.all_groups):
        members = [t if isinstance(t, str) else t.get("task", "") for t in (index[name].cfg or {}).get("task", [])]
        infos = []
        for member in members:
            entry = index.get(member)
            if entry is not None and entry.cfg is not None:
                n, src = _describe(entry.cfg, entry.yaml_path, caa_dir, mmlu_dir)
                infos.append(TaskInfo(member, n, src, group=name))
                grouped.add(member)
        total = None if any(i.items is None for i in infos) else sum(i.items or 0 for i in infos)
        missing = next((i.source for i in infos if i.items is None), "")
        out.append(TaskInfo(name, total, missing or f"{len(infos)} tasks", subtasks=len(infos)))
        out.extend(infos)
    for name in sorted(manager.all_subtasks):
        entry = index[name]
        if name not in grouped and entry.cfg is not None:
            n, src = _describe(entry.cfg, entry.yaml_path, caa_dir, mmlu_dir)
            out.append(TaskInfo(name, n, src))
    return out


_NAME_LINE = re.compile(r"^(?:task|group):[ \t]*([A-Za-z0-9_.+-]+)[ \t]*$", re.MULTILINE)


def shipped_task_names() -> set[str]:
    """Task and group names of the shipped task folder (its YAMLs' `task:` / `group:` lines): the cheap answer
    to "is this task installed" while a config is checked, before lm-eval's own index is built."""
    return {m[1] for p in tasks_dir().rglob("*.yaml") for m in _NAME_LINE.finditer(p.read_text(encoding="utf-8"))}
