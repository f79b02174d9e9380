"""Which lm-eval samples files the judge scores, the items in them, and where the verdicts go.

Only generations are judged: records of generate_until tasks (`resps` hold text) whose behaviour has a
rubric. lm-eval stores log-likelihood responses as strings too (`[["-0.69", "False"]]`), so the shape of
`resps`, not its type, tells an A/B file from an open-ended one; judging those strings would waste paid calls.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caa_eval.errors import CAAEvalError
from caa_eval.judge.rubrics import Rubric, rubric_for
from caa_eval.vocab import behaviour_of_task, samples_task, task_family

__all__ = ["Item", "task_of", "is_generation", "read_items", "find_samples", "output_path", "ensure_writable"]

log = logging.getLogger(__name__)

_LISTED_TASKS = 12  # the "nothing to judge" line names at most this many tasks


@dataclass(frozen=True)
class Item:
    """One answer to judge, with where it came from."""

    source: Path
    task: str
    doc_id: Any
    filter: str
    behaviour: str
    question: str
    answer: str


def task_of(path: str | Path) -> str:
    """The task name of a samples file (`samples_<task>_<date>.jsonl`), else the file's stem.

    Args:
        path: a samples file.
    """
    path = Path(path)
    return samples_task(path) or path.stem.removeprefix("samples_")


def _task_behaviour(task: str, rubrics: Mapping[str, Rubric]) -> str | None:
    """`caa_open_<behaviour>` names its behaviour; other task names do not."""
    if task_family(task) != "caa_open":
        return None
    return behaviour_of_task(task, known=list(rubrics))


def is_generation(record: Mapping[str, Any]) -> bool:
    """True when the record holds generated text: `resps` = one list of strings per request.

    Args:
        record: one line of an lm-eval samples file.
    """
    resps = record.get("resps")
    return (
        isinstance(resps, list)
        and bool(resps)
        and all(isinstance(r, list) and r and all(isinstance(x, str) for x in r) for r in resps)
    )


def _answer_text(record: Mapping[str, Any]) -> str | None:
    filtered = record.get("filtered_resps")
    if isinstance(filtered, list) and filtered and isinstance(filtered[0], str):
        return filtered[0]
    if isinstance(filtered, str):
        return filtered
    return record["resps"][0][0] if is_generation(record) else None


def _doc_behaviour(doc: Mapping[str, Any]) -> Any:
    return doc.get("behaviour") or doc.get("behavior")


def read_items(path: str | Path, rubrics: Mapping[str, Rubric]) -> list[Item]:
    """All judgeable records of one samples file; errors name the file and line.

    Args:
        path: an lm-eval `samples_<task>_<date>.jsonl` file of a generation task.
        rubrics: the rubrics in use (a record's behaviour must have one).
    """
    path = Path(path)
    task = task_of(path)
    task_behaviour = _task_behaviour(task, rubrics)
    items: list[Item] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CAAEvalError(f"{where}: invalid JSON ({exc.msg}); is this an lm-eval samples file?") from None
            doc = record.get("doc") if isinstance(record, dict) else None
            if not isinstance(doc, dict) or not isinstance(doc.get("question"), str):
                raise CAAEvalError(
                    f"{where}: no doc.question; judge expects lm-eval --log_samples output of a caa_open_* task"
                )
            if not is_generation(record):
                raise CAAEvalError(
                    f"{where}: resps hold log-likelihoods, not generated text; the judge scores generate_until "
                    "tasks only (caa_open_*), not A/B or MMLU tasks"
                )
            named = _doc_behaviour(doc) or task_behaviour
            if not named:
                raise CAAEvalError(
                    f"{where}: no behaviour (neither doc.behaviour nor a caa_open_<behaviour> task name)"
                )
            behaviour = rubric_for(str(named), rubrics)
            if behaviour is None:
                raise CAAEvalError(
                    f"{where}: no rubric for behaviour {named!r} (known: {', '.join(sorted(rubrics))}); "
                    "pass --rubrics FILE.yaml with an entry for it"
                )
            answer = _answer_text(record)
            if answer is None:
                raise CAAEvalError(
                    f"{where}: no generated text in filtered_resps/resps; rerun lm_eval with --log_samples"
                )
            items.append(
                Item(
                    path,
                    task,
                    record.get("doc_id"),
                    str(record.get("filter", "none")),
                    behaviour,
                    doc["question"],
                    answer,
                )
            )
    return items


def _first_record(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return json.loads(line)
    return None


def _why_not_judgeable(path: Path, rubrics: Mapping[str, Rubric]) -> str | None:
    """None when the file's first record is a generation with a question and a behaviour that has a rubric."""
    try:
        record = _first_record(path)
    except (OSError, ValueError):
        return "unreadable"
    if record is None:
        return "empty"
    if not isinstance(record, dict) or not is_generation(record):
        return "log-likelihood"
    doc = record.get("doc")
    if not isinstance(doc, dict) or not isinstance(doc.get("question"), str):
        return "no doc.question"
    named = _doc_behaviour(doc) or _task_behaviour(task_of(path), rubrics)
    if not named:
        return "no behaviour"
    return None if rubric_for(str(named), rubrics) else f"no rubric for {named!r}"


def _nothing_to_judge(where: str, skipped: dict[str, str], rubrics: Mapping[str, Rubric]) -> CAAEvalError:
    if not skipped:
        return CAAEvalError(
            f"no samples to judge in {where}: no samples_*.jsonl files; expected lm-eval --log_samples output "
            "of caa_open_<behaviour> tasks"
        )
    found = [f"{task} ({reason})" for task, reason in sorted(skipped.items())]
    if len(found) > _LISTED_TASKS:
        found = [*found[:_LISTED_TASKS], f"and {len(found) - _LISTED_TASKS} more"]
    return CAAEvalError(
        f"no samples to judge in {where}: found only {', '.join(found)}; the judge scores generations "
        "(generate_until) of caa_open_<behaviour> tasks or of tasks whose docs name a behaviour with a rubric "
        f"({', '.join(sorted(rubrics))}; --rubrics FILE.yaml adds one)"
    )


def find_samples(paths: Iterable[str | Path], rubrics: Mapping[str, Rubric]) -> list[Path]:
    """The samples files to judge: generations whose behaviour has a rubric; an error when there are none.

    Folders are searched recursively and anything else in them (A/B, MMLU) is skipped. A file given by
    name is taken unless it holds log-likelihoods (its records' errors then name the file and line).

    Args:
        paths: lm-eval output folders and/or samples files.
        rubrics: the rubrics in use.
    """
    found: list[Path] = []
    skipped: dict[str, str] = {}
    given = [Path(p) for p in paths]
    for path in given:
        if path.is_file():
            reason = _why_not_judgeable(path, rubrics)
            if reason == "log-likelihood":
                log.warning("skipping %s: its records are log-likelihoods, not generated text", path)
                skipped[task_of(path)] = reason
            else:
                found.append(path)
        elif path.is_dir():
            for p in sorted(path.rglob("samples_*.jsonl")):
                reason = _why_not_judgeable(p, rubrics)
                if reason is None:
                    found.append(p)
                    continue
                skipped.setdefault(task_of(p), reason)
                if reason.startswith("no rubric"):
                    log.warning("skipping %s: %s; pass --rubrics FILE.yaml with an entry for it", p, reason)
                else:
                    log.debug("skipping %s: %s", p, reason)
        else:
            raise CAAEvalError(
                f"{path}: no such file or folder; pass an lm-eval output folder or a samples_*.jsonl file"
            )
    if not found:
        raise _nothing_to_judge(", ".join(map(str, given)) or "(no paths)", skipped, rubrics)
    return list(dict.fromkeys(found))


def output_path(samples: Path, output_dir: Path | None = None) -> Path:
    """`samples_<task>_<time>.jsonl` -> `judged_<task>_<time>.jsonl`, beside it or in `output_dir`.

    Args:
        samples: the samples file.
        output_dir: where to write instead of beside the samples file.
    """
    name = "judged_" + samples.name.removeprefix("samples_")
    return (output_dir or samples.parent) / name


def ensure_writable(
    folder: Path, what: str = "judge outputs", fix: str = "pass --output-dir with a writable folder"
) -> None:
    """Create `folder` if needed and prove a file can be written there, before any paid judge call.

    Args:
        folder: the output folder.
        what: what goes there, for the error message.
        fix: what to do instead, for the error message.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".caa-eval-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        why = f"{blocker} is a file" if blocker is not None and not blocker.is_dir() else (exc.strerror or str(exc))
        raise CAAEvalError(f"cannot write {what} to {folder} ({why}); {fix}") from None
