"""Read lm-eval output folders and sweep folders into the long table.

A sweep cell says its steering config in cell.json; a plain lm-eval run says it in the model_args of its
results_*.json. Either way every per-item score in samples_*.jsonl / judged_*.jsonl becomes one row, with
the source file kept so that every number in a report can be traced back (docs/statistics.md).
"""

from __future__ import annotations

import ast
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from caa_eval.errors import CAAEvalError
from caa_eval.files import read_jsonl
from caa_eval.stats.table import LETTER_COLUMN, SHARED_BEHAVIOUR, format_layer, format_text, validate_long_table
from caa_eval.vocab import (
    JUDGE_METRIC,
    JUDGED_RE,
    RESULTS_RE,
    SAMPLES_RE,
    TASK_FAMILIES,
    behaviour_key,
    behaviour_of_task,
    primary_metric,
    task_family,
)

__all__ = ["long_table_from_runs", "parse_model_args"]

log = logging.getLogger(__name__)

# Families whose task name ends in the behaviour and that have a known primary metric (A/B, open-ended).
# Demo task names carry extra suffixes (`_ab`, `_open`), so they are read like any other task.
_BEHAVIOUR_FAMILIES = {family for _, family, metric, own in TASK_FAMILIES if own and metric}
# Families shared by all behaviour vectors with one lm-eval task per subject (MMLU): one cell per family.
_SUBJECT_FAMILIES = {family for _, family, _, own in TASK_FAMILIES if not own}
_NOT_METRICS = {
    "doc_id",
    "doc",
    "target",
    "arguments",
    "resps",
    "filtered_resps",
    "filter",
    "metrics",
    "doc_hash",
    "prompt_hash",
    "target_hash",
}


def parse_model_args(value: Any) -> dict[str, Any]:
    """lm-eval stores model_args as a dict (CLI) or as "k=v,k=v" (Python API); brackets may hold commas.

    Args:
        value: the `config.model_args` of a results_*.json.
    """
    if isinstance(value, dict):
        return dict(value)
    if not value:
        return {}
    if not isinstance(value, str):
        raise CAAEvalError(f"model_args {value!r} is neither a dict nor a 'k=v,k=v' string")
    parts: list[str] = []
    depth, quote = 0, ""
    current: list[str] = []
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in parts)):
        key, sep, raw = part.partition("=")
        if not sep:
            raise CAAEvalError(f"model_args {value!r}: expected key=value, got {part!r}")
        try:
            out[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = raw.strip()
    return out


def _vector_meta(vector: Any) -> dict[str, str]:
    """Behaviour and site from a caa-eval vector file's header; the file stem stands in for a missing or
    unreadable file, so a cell stays traceable to the vector it used."""
    if not vector:
        return {}
    path = Path(str(vector))
    meta: dict[str, Any] = {}
    if path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as fh:
                meta = json.loads((fh.metadata() or {}).get("caa_eval", "{}"))
        except Exception as exc:  # an unreadable header only costs the nicer name
            log.debug("could not read vector metadata from %s: %s", path, exc)
    behaviour = str(meta.get("behaviour") or "") or path.stem
    return {"behaviour": behaviour_key(behaviour), "site": format_text(meta.get("site"))}


def steering_from_model_args(args: dict[str, Any], results: dict[str, Any], where: str) -> dict[str, Any]:
    """Steering config of a plain lm-eval run, with steered-hf's defaults for what model_args leave out
    (multiplier 1, the vector's own site, positions after_instruction); no vector means unsteered."""
    vector = args.get("vector")
    meta = _vector_meta(vector)
    if not vector:
        multiplier = 0.0  # steered-hf without a vector is plain hf: a baseline
    else:
        try:
            multiplier = float(args.get("multiplier", 1.0))
        except (TypeError, ValueError):
            raise CAAEvalError(f"{where}: model_args multiplier={args['multiplier']!r} is not a number") from None
    behaviour = args.get("behaviour") or args.get("behavior")
    condition = format_text(args.get("condition"))
    if not condition and results.get("system_instruction"):
        sha = str(results.get("system_instruction_sha") or "")[:8]
        condition = f"system:{sha}" if sha else "system"
    return {
        "multiplier": multiplier,
        "layer": format_layer(args.get("layers", args.get("layer"))),
        "site": format_text(args.get("site")) or (meta.get("site", "") if vector else ""),
        "positions": format_text(args.get("positions")) or ("after_instruction" if vector else ""),
        "condition": condition,
        # multiplier 0 steers nothing: the vector a baseline run names does not make it that behaviour's
        "vector_behaviour": behaviour_key(str(behaviour))
        if behaviour
        else (meta.get("behaviour", "") if multiplier else ""),
    }


def steering_from_cell(cell: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        multiplier = float(cell["multiplier"])
    except (KeyError, TypeError, ValueError):
        raise CAAEvalError(f"{where}: cell.json needs a numeric 'multiplier'") from None
    behaviour = cell.get("behaviour") or cell.get("behavior")
    return {
        "multiplier": multiplier,
        "layer": format_layer(cell.get("layer", cell.get("layers"))),
        "site": format_text(cell.get("site")),
        "positions": format_text(cell.get("positions")),
        "condition": format_text(cell.get("condition")),
        "vector_behaviour": (
            behaviour_key(str(behaviour)) if behaviour else _vector_meta(cell.get("vector")).get("behaviour", "")
        ),
    }


def _identity(task: str, steering: dict[str, Any]) -> dict[str, str]:
    """Behaviour, task, item-id prefix, condition and subject of one lm-eval task under one steering config.

    The one labelling rule (docs/statistics.md): `behaviour` is the behaviour whose vector steered the row (or,
    at multiplier 0, the behaviour the run names, e.g. a finetuned model's); a run that names none (or names
    its own task's behaviour, as older sweep folders did) is the shared baseline `*` of its task, so the unsteered run of any task is the baseline of every vector measured
    on it. `task` says what was measured; a vector on another behaviour's task is just another task column.
    """
    behaviour = steering["vector_behaviour"]
    own = behaviour_of_task(task) if task_family(task) in _BEHAVIOUR_FAMILIES else None
    if steering["multiplier"] == 0 and behaviour == own:  # older sweeps named an A/B baseline for its task
        behaviour = ""
    if not behaviour:  # a steered row must name its vector: fall back to the task's own behaviour
        behaviour = own if steering["multiplier"] != 0 and own else SHARED_BEHAVIOUR
    ident = {"behaviour": behaviour, "task": task, "prefix": "", "condition": steering["condition"], "subject": ""}
    family = task_family(task)
    if family in _SUBJECT_FAMILIES:  # one lm-eval task per subject -> one cell per family and vector
        subject = task[len(family) :].lstrip("_") or family
        ident |= {"task": family, "prefix": f"{subject}:", "subject": subject}
    return ident


def _wanted(metric: str, task: str, metrics: str | Sequence[str]) -> bool:
    if metrics == "all":
        return True
    if metrics == "primary":
        primary = primary_metric(task)
        return primary is None or metric == primary
    return metric in metrics


def _as_score(value: Any) -> float | None:
    """A per-item metric value as float; None for values that are not numbers (payloads, strings)."""
    if value is None:
        return math.nan
    if isinstance(value, (bool, np.bool_, int, float, np.integer, np.floating)):
        return float(value)
    return None


def _matching_letter(line: dict[str, Any]) -> str:
    """The matching answer's letter an A/B doc of caa-eval's tasks carries (`matching`), "" for other docs."""
    doc = line.get("doc")
    letter = doc.get("matching") if isinstance(doc, dict) else None
    return letter if isinstance(letter, str) and len(letter) == 1 and letter.isalpha() else ""


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CAAEvalError(f"{path}: unreadable JSON ({exc}); restore or delete the file") from None
    if not isinstance(data, dict):
        raise CAAEvalError(f"{path}: expected a JSON object")
    return data


class _Folder:
    """One folder of lm-eval outputs; the steering config comes from cell.json or results_*.json."""

    def __init__(self, folder: Path, root: Path, cell: dict[str, Any] | None, notes: list[str]):
        self.root, self.cell, self.notes = root, cell, notes
        self.results = {m["date"]: p for p in sorted(folder.glob("*.json")) if (m := RESULTS_RE.match(p.name))}
        self.samples = [(p, m) for p in sorted(folder.glob("samples_*.jsonl")) if (m := SAMPLES_RE.match(p.name))]
        self.judged = [(p, m) for p in sorted(folder.glob("judged_*.jsonl")) if (m := JUDGED_RE.match(p.name))]
        self._steering: dict[str | None, dict[str, Any] | None] = {}

    def steering(self, date: str | None, path: Path) -> dict[str, Any] | None:
        if self.cell is not None:
            return self.cell
        if date not in self._steering:
            res_path = self.results.get(date) if date else None
            if res_path is None and len(self.results) == 1:
                res_path = next(iter(self.results.values()))
            if res_path is None:
                self.notes.append(
                    f"{path.relative_to(self.root)}: no matching results_*.json, steering config unknown; skipped"
                )
                self._steering[date] = None
            else:
                res = read_json(res_path)
                args = parse_model_args((res.get("config") or {}).get("model_args"))
                self._steering[date] = steering_from_model_args(args, res, str(res_path))
        return self._steering[date]

    def rows(self, metrics: str | Sequence[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        judged_tasks = {(m["task"], m["date"]) for _, m in self.judged}
        for path, m in self.samples:
            task, date = m["task"], m["date"]
            if primary_metric(task) == JUDGE_METRIC and metrics != "all":
                if (task, date) not in judged_tasks and (task, None) not in judged_tasks:
                    self.notes.append(
                        f"{path.relative_to(self.root)}: open-ended samples without "
                        f"judged_{task}_*.jsonl; run `caa-eval judge` first"
                    )
                continue
            if (steering := self.steering(date, path)) is not None:
                out += self._sample_rows(path, task, steering, metrics)
        for path, m in self.judged:
            task, date = m["task"], m["date"]
            if _wanted(JUDGE_METRIC, task, metrics) and (steering := self.steering(date, path)) is not None:
                out += self._judged_rows(path, task, steering)
        return out

    def _row(
        self,
        line: dict[str, Any],
        ident: dict[str, str],
        steering: dict[str, Any],
        metric: str,
        score: float,
        source: str,
    ) -> dict[str, Any]:
        return {
            "item_id": f"{ident['prefix']}{line.get('doc_id')}",
            "behaviour": ident["behaviour"],
            "task": ident["task"],
            "metric": metric,
            "layer": steering["layer"],
            "site": steering["site"],
            "positions": steering["positions"],
            "condition": ident["condition"],
            "subject": ident["subject"],
            LETTER_COLUMN: _matching_letter(line),
            "multiplier": steering["multiplier"],
            "score": score,
            "source": source,
        }

    def _sample_rows(
        self, path: Path, task: str, steering: dict[str, Any], metrics: str | Sequence[str]
    ) -> list[dict[str, Any]]:
        ident = _identity(task, steering)
        source = path.relative_to(self.root).as_posix()
        rows, first_filter, skipped = [], None, set()
        for line in read_jsonl(path):
            filt = line.get("filter")
            first_filter = filt if first_filter is None else first_filter
            if filt != first_filter:
                skipped.add(str(filt))
                continue
            for name in line.get("metrics") or [k for k in line if k not in _NOT_METRICS]:
                if name == "bypass" or name not in line or not _wanted(name, task, metrics):
                    continue
                value = _as_score(line[name])
                if value is not None:
                    rows.append(self._row(line, ident, steering, name, value, source))
        if skipped:
            self.notes.append(f"{source}: used filter {first_filter!r}, ignored {sorted(skipped)}")
        return rows

    def _judged_rows(self, path: Path, task: str, steering: dict[str, Any]) -> list[dict[str, Any]]:
        ident = _identity(task, steering)
        source = path.relative_to(self.root).as_posix()
        lines = read_jsonl(path)
        first_filter = lines[0].get("filter") if lines else None
        rows = []
        for line in lines:
            if line.get("filter") == first_filter:
                value = _as_score(line.get("score"))
                rows.append(
                    self._row(line, ident, steering, JUDGE_METRIC, math.nan if value is None else value, source)
                )
        return rows


def long_table_from_runs(run_dir: str | Path, metrics: str | Sequence[str] = "primary") -> pd.DataFrame:
    """Long table from a sweep folder (cells/<id>/cell.json + DONE) or a folder of plain lm-eval runs.

    Warnings (skipped cells, unjudged tasks) are logged and kept in `table.attrs["warnings"]`.

    Args:
        run_dir: the sweep folder or lm_eval --output_path folder.
        metrics: "primary" (p_match for A/B, p_correct for MMLU, judge_score for open-ended, every metric of
            other tasks), "all", or a list of metric names.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise CAAEvalError(f"{root}: not a folder; give a sweep folder or an lm_eval --output_path folder")
    notes: list[str] = []
    rows: list[dict[str, Any] | None] = []
    cells_dir = root / "cells"
    if cells_dir.is_dir():
        for cell_dir in sorted(p for p in cells_dir.iterdir() if p.is_dir()):
            if not (cell_dir / "DONE").exists():
                notes.append(f"cells/{cell_dir.name}: no DONE marker (unfinished); skipped")
                continue
            cell_json = cell_dir / "cell.json"
            if not cell_json.is_file():
                raise CAAEvalError(f"{cell_json}: missing; a finished sweep cell needs its cell.json")
            steering = steering_from_cell(read_json(cell_json), str(cell_json))
            folders = sorted({p.parent for p in cell_dir.rglob("*.jsonl")})
            found = [r for f in folders for r in _Folder(f, root, steering, notes).rows(metrics)]
            if not found:
                notes.append(f"cells/{cell_dir.name}: marked DONE but holds no samples or judged scores")
            rows.extend(found)
    else:
        folders = sorted({p.parent for p in root.rglob("*.jsonl") if p.name.startswith(("samples_", "judged_"))})
        for folder in folders:
            rows.extend(_Folder(folder, root, None, notes).rows(metrics))
    for note in notes:
        log.warning(note)
    if not rows:
        raise CAAEvalError(
            f"{root}: no per-item scores found (samples_*.jsonl / judged_*.jsonl); run lm_eval with "
            "--log_samples --output_path, and `caa-eval judge` for open-ended tasks"
        )
    table = validate_long_table(pd.DataFrame.from_records(rows), origin=str(root))
    table.attrs["warnings"] = notes
    return table
