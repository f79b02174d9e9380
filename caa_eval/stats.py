"""Paired significance statistics for steering effects, computed from a long table of per-item scores.

Every cell (behaviour, task, metric, layer, site, positions, condition, multiplier) is scored on the same
items as its multiplier-0 baseline, so the tests work on per-item differences: item difficulty cancels and
50 items are enough to see CAA-sized effects. docs/statistics.md explains each column.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import logging
import math
import os
import re
import warnings
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from caa_eval.errors import CAAEvalError
from caa_eval.files import write_atomic

log = logging.getLogger(__name__)

REQUIRED = ("item_id", "behaviour", "multiplier", "score")
OPTIONAL = ("task", "layer", "site", "positions", "condition", "metric")
# A cell is one steering configuration; its baseline is matched on BASELINE_KEY (see _Baselines).
GROUP_KEY = ["behaviour", "task", "metric", "layer", "site", "positions", "condition"]
CELL_KEY = [*GROUP_KEY, "multiplier"]
BASELINE_KEY = ["behaviour", "task", "metric", "condition"]
CONFIG_KEY = ["layer", "site", "positions"]
BASELINE_CONFIG = ["baseline_layer", "baseline_site", "baseline_positions"]  # which multiplier-0 rows were used
SHARED_BEHAVIOUR = "*"  # a multiplier-0 row that is the baseline for every behaviour on its task
DEFAULT_METRIC = "score"
JUDGE_METRIC = "judge_score"
NOISE = 1e-12  # differences and spreads below this are floating-point noise
BASELINE_TOLERANCE = 1e-6  # multiplier-0 runs at different layers must agree to this (they steer nothing)
TESTS = ("wilcoxon", "permutation")


# ----------------------------------------------------------------------------------------------------
# long-table normalisation and validation


def format_layer(value: Any) -> str:
    """One spelling per layer setting ("13", "10,12", "") so that cells from CSVs and runs group together."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        text = value.strip()
        if not text or text.lower() in ("nan", "none", "null"):
            return ""
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if isinstance(value, str):
            return value.strip()
    if isinstance(value, (list, tuple)):
        return ",".join(format_layer(v) for v in value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _format_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(_format_text(v) for v in value)
    return str(value).strip()


def format_multiplier(m: float) -> str:
    return "0" if m == 0 else f"{m:+g}"


def _where(origin: str, rows: Iterable[int], unit: str = "row") -> str:
    rows = list(rows)
    shown = ", ".join(str(r) for r in rows[:5]) + (" …" if len(rows) > 5 else "")
    return f"{origin}: {unit}{'s' if len(rows) > 1 else ''} {shown}"


def _cell_label(key: Sequence[Any], names: Sequence[str] = CELL_KEY) -> str:
    parts = []
    for name, value in zip(names, key):
        if name == "multiplier":
            parts.append(f"multiplier={format_multiplier(float(value))}")
        elif value != "":
            parts.append(f"{name}={value}")
    return "(" + ", ".join(parts) + ")"


def validate_long_table(df: pd.DataFrame, origin: str = "table", lines: Sequence[int] | None = None) -> pd.DataFrame:
    """Check and normalise a long table; the returned copy has every column, typed, with no duplicates.

    Why strict: a silently mistyped multiplier or a duplicated run would produce confident wrong p-values.
    Rows with behaviour "*" (allowed at multiplier 0 only) are copied to every behaviour of their task, so an
    unsteered MMLU run can serve as the baseline of all behaviour vectors. `lines` gives file line numbers
    for error messages (default: 0-based row positions).
    """
    if not isinstance(df, pd.DataFrame):
        raise CAAEvalError(f"{origin}: expected a pandas DataFrame, got {type(df).__name__}")
    table = df.rename(columns={"behavior": "behaviour"}).copy()
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise CAAEvalError(
            f"{origin}: missing column(s) {', '.join(missing)}; a long table needs {', '.join(REQUIRED)} "
            f"(optional: {', '.join(OPTIONAL)}); found {', '.join(map(str, table.columns)) or 'none'}"
        )
    if table.empty:
        raise CAAEvalError(f"{origin}: the table has no rows; give at least one cell and its multiplier-0 baseline")
    table = table.reset_index(drop=True)
    unit = "line" if lines is not None else "row"
    row_no = pd.Series(np.asarray(lines) if lines is not None else table.index.to_numpy(), index=table.index)

    def where(mask: pd.Series) -> str:
        return _where(origin, row_no[mask], unit)

    for col in ("item_id", "behaviour"):
        table[col] = table[col].map(_format_text).astype(object)
        empty = table[col] == ""
        if empty.any():
            raise CAAEvalError(f"{where(empty)}: empty {col}; every row needs one")
    table["task"] = table["task"].map(_format_text).astype(object) if "task" in table else ""
    table.loc[table["task"] == "", "task"] = table["behaviour"]
    table["metric"] = table["metric"].map(_format_text).astype(object) if "metric" in table else DEFAULT_METRIC
    table.loc[table["metric"] == "", "metric"] = DEFAULT_METRIC
    table["layer"] = table["layer"].map(format_layer).astype(object) if "layer" in table else ""
    for col in ("site", "positions", "condition"):
        table[col] = table[col].map(_format_text).astype(object) if col in table else ""
    if "source" in table:
        table["source"] = table["source"].map(_format_text).astype(object)
    else:
        table["source"] = origin

    mult = pd.to_numeric(table["multiplier"], errors="coerce")
    bad = mult.isna() | ~np.isfinite(mult.astype(float))
    if bad.any():
        shown = table.loc[bad, "multiplier"].head(3).tolist()
        raise CAAEvalError(f"{where(bad)}: multiplier {shown} is not a finite number; use e.g. -1, 0, 0.5")
    table["multiplier"] = mult.astype(float) + 0.0  # -0.0 -> 0.0

    raw = table["score"].map(lambda v: float(v) if isinstance(v, (bool, np.bool_)) else v)
    score = pd.to_numeric(raw, errors="coerce").astype(float)
    blank = raw.isna() | raw.map(lambda v: isinstance(v, str) and v.strip().lower() in ("", "nan", "na", "null", "none"))
    bad = score.isna() & ~blank
    if bad.any():
        shown = raw[bad].head(3).tolist()
        raise CAAEvalError(f"{where(bad)}: score {shown} is not a number; leave it empty for a missing judge score")
    if np.isinf(score).any():
        raise CAAEvalError(f"{where(np.isinf(score))}: infinite score; scores must be finite or empty")
    table["score"] = score

    shared = table["behaviour"] == SHARED_BEHAVIOUR
    if (shared & (table["multiplier"] != 0)).any():
        raise CAAEvalError(
            f"{where(shared & (table['multiplier'] != 0))}: behaviour '*' (shared baseline) "
            "is only allowed at multiplier 0; name the behaviour of the steering vector"
        )
    table = _expand_shared(table)

    dup = table.duplicated([*CELL_KEY, "item_id"], keep=False)
    if dup.any():
        first = table[dup].iloc[0]
        same = table[dup & (table["item_id"] == first["item_id"])]
        same = same[(same[CELL_KEY] == first[CELL_KEY]).all(axis=1)]
        sources = sorted(set(same["source"]))
        raise CAAEvalError(
            f"{origin}: item {first['item_id']!r} appears {len(same)} times in cell "
            f"{_cell_label(first[CELL_KEY].tolist())} (from {', '.join(sources)}); each item may appear once per "
            "cell: remove the repeated run or give it a different condition"
        )
    columns = ["item_id", *CELL_KEY, "score", "source"]
    extra = [c for c in table.columns if c not in columns]
    return table[columns + extra].sort_values([*CELL_KEY, "item_id"], kind="stable").reset_index(drop=True)


def _expand_shared(table: pd.DataFrame) -> pd.DataFrame:
    shared = table["behaviour"] == SHARED_BEHAVIOUR
    if not shared.any():
        return table
    own, common = table[~shared], table[shared]
    if own.empty:
        raise CAAEvalError("only shared ('*') baseline rows found; add steered rows that name a behaviour")
    pieces = [own]
    targets = own[["task", "metric", "condition", "behaviour"]].drop_duplicates()
    for (task, metric, condition), rows in common.groupby(["task", "metric", "condition"], sort=False):
        behaviours = targets[(targets.task == task) & (targets.metric == metric) & (targets.condition == condition)]
        if behaviours.empty:
            log.warning("shared ('*') baseline rows for task=%s metric=%s condition=%s match no steered behaviour; "
                        "ignored", task, metric, condition or "(none)")
        for behaviour in behaviours["behaviour"]:
            # a behaviour's own baseline at the same configuration wins over the shared one
            have = own[(own.behaviour == behaviour) & (own.task == task) & (own.metric == metric)
                       & (own.condition == condition) & (own.multiplier == 0)]
            copy = rows.assign(behaviour=behaviour)
            if not have.empty:
                taken = set(map(tuple, have[CONFIG_KEY].to_numpy().tolist()))
                copy = copy[[tuple(r) not in taken for r in copy[CONFIG_KEY].to_numpy().tolist()]]
            pieces.append(copy)
    return pd.concat(pieces, ignore_index=True)


def load_long_table(path: str | Path) -> pd.DataFrame:
    """Read a long table from CSV or JSONL (one object per line) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise CAAEvalError(f"{path}: no such file; give a CSV or JSONL long table or a run folder")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        records = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CAAEvalError(
                        f"{path}: line {lineno} is not valid JSON ({exc.msg}); write one JSON object per line"
                    ) from None
                if not isinstance(obj, dict):
                    raise CAAEvalError(f"{path}: line {lineno} is not a JSON object; write one object per line")
                records.append((lineno, obj))
        df = pd.DataFrame.from_records([r for _, r in records])
        lines = [n for n, _ in records]
    elif suffix in (".csv", ".tsv", ".txt"):
        try:
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            reason = str(exc).splitlines()[0]
            raise CAAEvalError(f"{path}: not a readable CSV ({reason}); check quoting and the column count") from None
        except pd.errors.EmptyDataError:
            raise CAAEvalError(f"{path}: the file is empty; write a header line {','.join(REQUIRED)} and rows") from None
        df.columns = [c.strip() for c in df.columns]
        lines = list(range(2, len(df) + 2))  # line 1 is the header
    else:
        raise CAAEvalError(f"{path}: unknown table format {suffix!r}; use .csv, .tsv or .jsonl")
    table = validate_long_table(df, origin=str(path), lines=lines)
    if (table["source"] == str(path)).all():
        table["source"] = path.name
    return table


# ----------------------------------------------------------------------------------------------------
# lm-eval run folders and sweep folders

_DATE = r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?"
_SAMPLES_RE = re.compile(rf"^samples_(?P<task>.+?)(?:_(?P<date>{_DATE}))?\.jsonl$")
_JUDGED_RE = re.compile(rf"^judged_(?P<task>.+?)(?:_(?P<date>{_DATE}))?\.jsonl$")
_RESULTS_RE = re.compile(rf"^.*_(?P<date>{_DATE})\.json$")
# task-name prefix -> (family, primary metric); order matters (balanced before plain A/B)
FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("caa_ab_balanced_", "caa_ab_balanced", "p_match"),
    ("caa_ab_", "caa_ab", "p_match"),
    ("caa_open_", "caa_open", JUDGE_METRIC),
    ("caa_mmlu_2opt", "caa_mmlu_2opt", "p_correct"),
)
PRIMARY_BY_FAMILY = {family: metric for _, family, metric in FAMILIES}
_NOT_METRICS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
                "doc_hash", "prompt_hash", "target_hash"}


def task_family(task: str) -> str:
    """The CAA task family of an lm-eval task name ("caa_ab", "caa_open", "caa_mmlu_2opt", …) or ""."""
    for prefix, family, _ in FAMILIES:
        if task == family or task.startswith(prefix):
            return family
    return ""


def primary_metric(task: str) -> str | None:
    for prefix, family, metric in FAMILIES:
        if task == family or task.startswith(prefix):
            return metric
    return None


def canonical_behaviour(name: str) -> str:
    """Task names spell behaviours with "_", CAA and vector files with "-": use "-" so both meet."""
    return name.strip().replace("_", "-")


def parse_model_args(value: Any) -> dict[str, Any]:
    """lm-eval stores model_args as a dict (CLI) or as "k=v,k=v" (Python API); brackets may hold commas."""
    if isinstance(value, dict):
        return dict(value)
    if not value:
        return {}
    if not isinstance(value, str):
        raise CAAEvalError(f"model_args {value!r} is neither a dict nor a 'k=v,k=v' string")
    parts, depth, quote, current = [], 0, "", []
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
    return {"behaviour": canonical_behaviour(behaviour), "site": _format_text(meta.get("site"))}


def _steering_from_model_args(args: dict[str, Any], results: dict[str, Any], where: str) -> dict[str, Any]:
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
    condition = _format_text(args.get("condition"))
    if not condition and results.get("system_instruction"):
        sha = str(results.get("system_instruction_sha") or "")[:8]
        condition = f"system:{sha}" if sha else "system"
    return {
        "multiplier": multiplier,
        "layer": format_layer(args.get("layers", args.get("layer"))),
        "site": _format_text(args.get("site")) or (meta.get("site", "") if vector else ""),
        "positions": _format_text(args.get("positions")) or ("after_instruction" if vector else ""),
        "condition": condition,
        "vector_behaviour": canonical_behaviour(str(behaviour)) if behaviour else meta.get("behaviour", ""),
    }


def _steering_from_cell(cell: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        multiplier = float(cell["multiplier"])
    except (KeyError, TypeError, ValueError):
        raise CAAEvalError(f"{where}: cell.json needs a numeric 'multiplier'") from None
    behaviour = cell.get("behaviour") or cell.get("behavior")
    return {
        "multiplier": multiplier,
        "layer": format_layer(cell.get("layer", cell.get("layers"))),
        "site": _format_text(cell.get("site")),
        "positions": _format_text(cell.get("positions")),
        "condition": _format_text(cell.get("condition")),
        "vector_behaviour": (canonical_behaviour(str(behaviour)) if behaviour
                             else _vector_meta(cell.get("vector")).get("behaviour", "")),
    }


def _identity(task: str, steering: dict[str, Any]) -> tuple[str, str, str, str]:
    """(behaviour, task, item-id prefix, condition) for one lm-eval task under one steering config."""
    condition = steering["condition"]
    vector_behaviour = steering["vector_behaviour"]
    for prefix in ("caa_ab_balanced_", "caa_ab_", "caa_open_"):
        if task.startswith(prefix):
            behaviour = canonical_behaviour(task[len(prefix):])
            if vector_behaviour and vector_behaviour != behaviour and steering["multiplier"] != 0:
                # cross-behaviour steering: keep it apart from the behaviour's own vector
                condition = ",".join(filter(None, [condition, f"vector:{vector_behaviour}"]))
            return behaviour, task, "", condition
    if task.startswith("caa_mmlu_2opt_"):  # one lm-eval task per subject -> one MMLU cell per vector
        subject = task[len("caa_mmlu_2opt_"):]
        return vector_behaviour or SHARED_BEHAVIOUR, "caa_mmlu_2opt", f"{subject}:", condition
    return vector_behaviour or SHARED_BEHAVIOUR, task, "", condition


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
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise CAAEvalError(
                    f"{path}: line {lineno} is not valid JSON; the file is truncated or corrupt, rerun that task"
                ) from None
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CAAEvalError(f"{path}: unreadable JSON ({exc}); restore or delete the file") from None
    if not isinstance(data, dict):
        raise CAAEvalError(f"{path}: expected a JSON object")
    return data


def _read_folder(folder: Path, root: Path, cell: dict[str, Any] | None, metrics: str | Sequence[str],
                 notes: list[str]) -> list[dict[str, Any]]:
    """Rows from one folder of lm-eval outputs; the steering config comes from cell.json or results_*.json."""
    results = {m["date"]: p for p in sorted(folder.glob("*.json")) if (m := _RESULTS_RE.match(p.name))}
    samples = [(p, m) for p in sorted(folder.glob("samples_*.jsonl")) if (m := _SAMPLES_RE.match(p.name))]
    judged = [(p, m) for p in sorted(folder.glob("judged_*.jsonl")) if (m := _JUDGED_RE.match(p.name))]
    rows: list[dict[str, Any]] = []
    steering_cache: dict[str | None, dict[str, Any] | None] = {}

    def steering_for(date: str | None, path: Path) -> dict[str, Any] | None:
        if cell is not None:
            return cell
        if date not in steering_cache:
            res_path = results.get(date) if date else None
            if res_path is None and len(results) == 1:
                res_path = next(iter(results.values()))
            if res_path is None:
                notes.append(f"{path.relative_to(root)}: no matching results_*.json, steering config unknown; skipped")
                steering_cache[date] = None
            else:
                res = _read_json(res_path)
                args = parse_model_args((res.get("config") or {}).get("model_args"))
                steering_cache[date] = _steering_from_model_args(args, res, str(res_path))
        return steering_cache[date]

    judged_tasks = {(m["task"], m["date"]) for _, m in judged}
    for path, m in samples:
        task, date = m["task"], m["date"]
        if task.startswith("caa_open_") and metrics != "all":
            if (task, date) not in judged_tasks and (task, None) not in judged_tasks:
                notes.append(f"{path.relative_to(root)}: open-ended samples without judged_{task}_*.jsonl; "
                             "run `caa-eval judge` first")
            continue
        steering = steering_for(date, path)
        if steering is None:
            continue
        behaviour, task_out, prefix, condition = _identity(task, steering)
        source = path.relative_to(root).as_posix()
        first_filter: str | None = None
        skipped_filters: set[str] = set()
        for line in _read_jsonl(path):
            filt = line.get("filter")
            first_filter = filt if first_filter is None else first_filter
            if filt != first_filter:
                skipped_filters.add(str(filt))
                continue
            names = line.get("metrics") or [k for k in line if k not in _NOT_METRICS]
            for name in names:
                if name == "bypass" or name not in line or not _wanted(name, task, metrics):
                    continue
                value = _as_score(line[name])
                if value is None:
                    continue
                rows.append({"item_id": f"{prefix}{line.get('doc_id')}", "behaviour": behaviour, "task": task_out,
                             "metric": name, "layer": steering["layer"], "site": steering["site"],
                             "positions": steering["positions"], "condition": condition,
                             "multiplier": steering["multiplier"], "score": value, "source": source})
        if skipped_filters:
            notes.append(f"{source}: used filter {first_filter!r}, ignored {sorted(skipped_filters)}")

    for path, m in judged:
        task, date = m["task"], m["date"]
        if not _wanted(JUDGE_METRIC, task, metrics):
            continue
        steering = steering_for(date, path)
        if steering is None:
            continue
        behaviour, task_out, prefix, condition = _identity(task, steering)
        source = path.relative_to(root).as_posix()
        lines = _read_jsonl(path)
        first_filter = lines[0].get("filter") if lines else None
        for line in lines:
            if line.get("filter") != first_filter:
                continue
            value = _as_score(line.get("score"))
            rows.append({"item_id": f"{prefix}{line.get('doc_id')}", "behaviour": behaviour, "task": task_out,
                         "metric": JUDGE_METRIC, "layer": steering["layer"], "site": steering["site"],
                         "positions": steering["positions"], "condition": condition,
                         "multiplier": steering["multiplier"], "score": math.nan if value is None else value,
                         "source": source})
    return rows


def long_table_from_runs(run_dir: str | Path, metrics: str | Sequence[str] = "primary") -> pd.DataFrame:
    """Long table from a sweep folder (cells/<id>/cell.json + DONE) or a folder of plain lm-eval runs.

    metrics: "primary" (p_match for A/B, p_correct for MMLU, judge_score for open-ended, every metric of
    other tasks), "all", or a list of metric names. Warnings (skipped cells, unjudged tasks) are logged and
    kept in `table.attrs["warnings"]`.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise CAAEvalError(f"{root}: not a folder; give a sweep folder or an lm_eval --output_path folder")
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    cells_dir = root / "cells"
    if cells_dir.is_dir():
        for cell_dir in sorted(p for p in cells_dir.iterdir() if p.is_dir()):
            if not (cell_dir / "DONE").exists():
                notes.append(f"cells/{cell_dir.name}: no DONE marker (unfinished); skipped")
                continue
            cell_json = cell_dir / "cell.json"
            if not cell_json.is_file():
                raise CAAEvalError(f"{cell_json}: missing; a finished sweep cell needs its cell.json")
            steering = _steering_from_cell(_read_json(cell_json), str(cell_json))
            folders = sorted({p.parent for p in cell_dir.rglob("*.jsonl")})
            found = [r for f in folders for r in _read_folder(f, root, steering, metrics, notes)]
            if not found:
                notes.append(f"cells/{cell_dir.name}: marked DONE but holds no samples or judged scores")
            rows.extend(found)
    else:
        folders = sorted({p.parent for p in root.rglob("*.jsonl") if p.name.startswith(("samples_", "judged_"))})
        for folder in folders:
            rows.extend(_read_folder(folder, root, None, metrics, notes))
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


def load_any(path: str | Path, metrics: str | Sequence[str] = "primary") -> pd.DataFrame:
    """A folder is read as runs, a file as a long table."""
    path = Path(path)
    return long_table_from_runs(path, metrics) if path.is_dir() else load_long_table(path)


# ----------------------------------------------------------------------------------------------------
# statistics


def _seeded_rng(seed: int, key: Sequence[Any]) -> np.random.Generator:
    """One generator per cell, derived from the seed and the cell's name: results do not depend on which
    other cells are in the table or in what order they are computed."""
    return np.random.default_rng([int(seed), zlib.crc32("|".join(map(str, key)).encode())])


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def mean_ci(x: np.ndarray, rng: np.random.Generator, n_resamples: int = 2000,
            confidence: float = 0.95) -> tuple[float, float, str]:
    """Bootstrap (BCa, falling back to percentile) CI of the mean over items."""
    x = np.asarray(x, dtype=float)
    if x.size < 2:
        return math.nan, math.nan, "n<2: no CI"
    if np.ptp(x) <= NOISE:
        return float(x.mean()), float(x.mean()), ""
    note = ""
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sps.bootstrap((x,), _mean, n_resamples=n_resamples, confidence_level=confidence,
                                method=method, vectorized=True, rng=rng)
        low, high = res.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return float(low), float(high), note
        note = "BCa degenerate: percentile CI"
    return math.nan, math.nan, "bootstrap failed"


def paired_tests(d: np.ndarray, rng: np.random.Generator, n_permutations: int = 9999) -> tuple[float, float, str]:
    """Two-sided Wilcoxon signed-rank p and sign-flip permutation p (statistic: mean difference)."""
    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return math.nan, math.nan, "n<2: no test"
    if np.all(d == 0):
        return 1.0, 1.0, "all differences zero: Wilcoxon undefined, p=1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p_w = float(sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
        p_p = float(sps.permutation_test((d,), _mean, permutation_type="samples", vectorized=True,
                                         n_resamples=n_permutations, alternative="two-sided", rng=rng).pvalue)
    return p_w, p_p, ""


@functools.lru_cache(maxsize=None)
def mde_dz(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest standardised paired effect (Cohen's dz) a two-sided paired t-test detects with this power."""
    if n < 3:
        return math.nan
    from statsmodels.stats.power import TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(TTestPower().solve_power(nobs=n, alpha=alpha, power=power, alternative="two-sided"))
        except Exception:  # solver failure at tiny n: say "unknown", not a wrong number
            return math.nan


def adjust_pvalues(p: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Holm and Benjamini–Hochberg adjusted p over the finite entries (NaN stays NaN, outside the family)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p, dtype=float)
    holm, bh = np.full_like(p, np.nan), np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        holm[ok] = multipletests(p[ok], method="holm")[1]
        bh[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return holm, bh


def _config_label(config: Sequence[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(CONFIG_KEY, config) if v) or "unsteered"


class _Baselines:
    """Multiplier-0 scores for a cell, matched on behaviour/task/metric/condition.

    Steering with multiplier 0 changes nothing, so the baseline does not depend on layer/site/positions:
    rows at the cell's own (layer, site, positions) are used when present; otherwise all multiplier-0
    configurations of that behaviour/task/metric/condition, which must agree per item within
    BASELINE_TOLERANCE (the first configuration in sorted order supplies the values).
    """

    def __init__(self, table: pd.DataFrame):
        zero = table[table["multiplier"] == 0]
        self._by_base: dict[tuple, dict[tuple, pd.DataFrame]] = {}
        for key, rows in zero.groupby(BASELINE_KEY + CONFIG_KEY, sort=True):
            self._by_base.setdefault(tuple(key[:4]), {})[tuple(key[4:])] = rows
        self._cache: dict[tuple, tuple[pd.Series, list[str], tuple[str, ...], str]] = {}

    def get(self, group: tuple) -> tuple[pd.Series, list[str], tuple[str, ...], str]:
        """(scores by item_id, source files, (layer, site, positions) used, note) for a GROUP_KEY tuple."""
        keyd = dict(zip(GROUP_KEY, group))
        base = tuple(keyd[k] for k in BASELINE_KEY)
        config = tuple(keyd[k] for k in CONFIG_KEY)
        configs = self._by_base.get(base)
        if not configs:
            raise CAAEvalError(
                f"no multiplier-0 baseline for cell {_cell_label(group, GROUP_KEY)}; add multiplier-0 rows for "
                f"behaviour={keyd['behaviour']}, task={keyd['task']}, metric={keyd['metric']}, "
                f"condition={keyd['condition'] or '(none)'}"
            )
        use = [config] if config in configs else sorted(configs)
        cache_key = (base, tuple(use))  # the first config in `use` supplies the values
        if cache_key not in self._cache:
            frames = [configs[c].set_index("item_id")["score"] for c in use]
            merged = pd.concat(frames, axis=1)
            spread = merged.max(axis=1) - merged.min(axis=1)
            if (spread > BASELINE_TOLERANCE).any():
                item = spread[spread > BASELINE_TOLERANCE].index[0]
                raise CAAEvalError(
                    f"multiplier-0 baselines for cell {_cell_label(group, GROUP_KEY)} disagree on item {item!r} "
                    f"across layer/site/positions {use}; add a multiplier-0 run at the cell's own layer/site/positions"
                )
            scores = frames[0]
            for other in frames[1:]:
                scores = scores.combine_first(other)
            sources = sorted({s for c in use for s in configs[c]["source"]})
            note = "" if config in configs else f"baseline from {_config_label(use[0])}" + (
                f" (+{len(use) - 1} agreeing)" if len(use) > 1 else "")
            self._cache[cache_key] = (scores, sources, use[0], note)
        return self._cache[cache_key]


def compute_stats(df: pd.DataFrame, *, alpha: float = 0.05, seed: int = 0, n_resamples: int = 2000,
                  n_permutations: int = 9999, primary_test: str = "wilcoxon", confidence: float = 0.95) -> pd.DataFrame:
    """One row per cell: mean with bootstrap CI, and for multiplier≠0 the paired comparison with its baseline.

    The correction family is every cell-vs-0 test in `df` (Holm and BH on the `primary_test` p-values);
    multiplier-0 rows are reported for their mean/CI only. Deterministic for a given seed.
    """
    if primary_test not in TESTS:
        raise CAAEvalError(f"unknown test {primary_test!r}; choose {' or '.join(TESTS)}")
    if not 0 < alpha < 1:
        raise CAAEvalError(f"alpha={alpha} must lie strictly between 0 and 1")
    table = validate_long_table(df)
    baselines = _Baselines(table)
    out: list[dict[str, Any]] = []
    for key, rows in table.groupby(CELL_KEY, sort=True):
        key = tuple(key)
        group, multiplier = key[:-1], float(key[-1])
        rng = _seeded_rng(seed, key)
        scores = rows.set_index("item_id")["score"]
        valid = scores.dropna().to_numpy()
        low, high, ci_note = mean_ci(valid, rng, n_resamples, confidence)
        cell = dict(zip(CELL_KEY, key))
        row: dict[str, Any] = cell | {
            "is_baseline": multiplier == 0, "n": int(valid.size), "n_items": int(valid.size),
            "n_missing": int(scores.isna().sum()), "n_unpaired": 0,
            "mean": float(valid.mean()) if valid.size else math.nan, "ci_low": low, "ci_high": high,
            "baseline_mean": math.nan, "diff_vs_0": math.nan, "diff_ci_low": math.nan, "diff_ci_high": math.nan,
            "p_wilcoxon": math.nan, "p_permutation": math.nan, "cohen_dz": math.nan, "frac_wrong_way": math.nan,
            "mde": math.nan, "mde_dz": math.nan, **{b: cell[c] for b, c in zip(BASELINE_CONFIG, CONFIG_KEY)},
            "sources": ";".join(sorted(set(rows["source"]))), "baseline_sources": "",
        }
        notes = [ci_note] if ci_note else []
        if multiplier != 0:
            base, base_sources, base_config, base_note = baselines.get(group)
            common = scores.index.intersection(base.index)
            if common.empty:
                raise CAAEvalError(
                    f"cell {_cell_label(key)} shares no item_id with its multiplier-0 baseline; pair the same items"
                )
            pair = pd.DataFrame({"x": scores.loc[common], "b": base.loc[common]})
            ok = pair.notna().all(axis=1)
            d = (pair["x"] - pair["b"])[ok].to_numpy(dtype=float, copy=True)
            d[np.abs(d) <= NOISE] = 0.0  # floating-point noise is a tie, not a direction
            n = int(d.size)
            unpaired = int(len(scores.index.symmetric_difference(base.index)))
            if unpaired:
                notes.append(f"{unpaired} item(s) in only one of cell/baseline: dropped")
            p_w, p_p, test_note = paired_tests(d, rng, n_permutations)
            d_low, d_high, d_note = mean_ci(d, rng, n_resamples, confidence)
            sd = float(np.std(d, ddof=1)) if n >= 2 else math.nan
            flat = n >= 2 and sd <= NOISE * max(1.0, abs(float(np.mean(d))))
            dz = float(np.mean(d) / sd) if n >= 2 and not flat else math.nan
            if flat:
                notes.append("zero variance of differences: dz undefined")
            row.update({
                "n": n, "n_missing": int((~ok).sum()), "n_unpaired": unpaired,
                "baseline_mean": float(pair["b"][ok].mean()) if n else math.nan,
                "diff_vs_0": float(d.mean()) if n else math.nan, "diff_ci_low": d_low, "diff_ci_high": d_high,
                "p_wilcoxon": p_w, "p_permutation": p_p, "cohen_dz": dz,
                "frac_wrong_way": float(np.mean(np.sign(d) == -np.sign(multiplier))) if n else math.nan,
                "mde_dz": mde_dz(n, alpha), "mde": mde_dz(n, alpha) * sd if n >= 3 else math.nan,
                "baseline_sources": ";".join(base_sources),
            } | dict(zip(BASELINE_CONFIG, base_config)))
            notes += [t for t in (test_note, d_note, base_note) if t]
        row["note"] = "; ".join(dict.fromkeys(notes))
        out.append(row)
    cells = pd.DataFrame(out)
    primary = cells[f"p_{primary_test}"].where(~cells["is_baseline"])
    cells["p_holm"], cells["p_bh"] = adjust_pvalues(primary.to_numpy())
    cells["significant"] = cells["p_holm"] < alpha
    cells.attrs.update({"alpha": alpha, "seed": seed, "n_resamples": n_resamples, "n_permutations": n_permutations,
                        "primary_test": primary_test, "confidence": confidence,
                        "n_tests": int(np.isfinite(primary).sum())})
    return cells[_CELL_COLUMNS]


_CELL_COLUMNS = [
    *CELL_KEY, "is_baseline", "n", "n_items", "n_missing", "n_unpaired", "mean", "ci_low", "ci_high",
    "baseline_mean", "diff_vs_0", "diff_ci_low", "diff_ci_high", "p_wilcoxon", "p_permutation", "p_holm", "p_bh",
    "significant", "cohen_dz", "frac_wrong_way", "mde", "mde_dz", *BASELINE_CONFIG, "note", "sources",
    "baseline_sources",
]


def per_item_slopes(matrix: pd.DataFrame) -> pd.Series:
    """OLS slope of score on multiplier for each item (row); items need ≥2 scored multipliers."""
    levels = np.asarray(matrix.columns, dtype=float)
    values = matrix.to_numpy(dtype=float)
    slopes = np.full(len(matrix), np.nan)
    complete = ~np.isnan(values).any(axis=1)
    if complete.any():
        slopes[complete] = np.polyfit(levels, values[complete].T, 1)[0]
    for i in np.flatnonzero(~complete):
        ok = ~np.isnan(values[i])
        if np.unique(levels[ok]).size >= 2:
            slopes[i] = np.polyfit(levels[ok], values[i, ok], 1)[0]
    return pd.Series(slopes, index=matrix.index)


def compute_dose_response(df: pd.DataFrame, *, seed: int = 0, n_resamples: int = 2000,
                          confidence: float = 0.95) -> pd.DataFrame:
    """Per configuration (all but the multiplier): mean per-item OLS slope with bootstrap CI, and Page's L.

    Page's trend test treats items as blocks and multipliers (including the 0 baseline) as ordered
    treatments; it is run in both orders and reported two-sided (2 × the smaller one-sided p). Holm over
    all configurations' trend tests is a separate family from the cell-vs-0 tests.
    """
    table = validate_long_table(df)
    baselines = _Baselines(table)
    steered = table[table["multiplier"] != 0]
    out = []
    for group, rows in steered.groupby(GROUP_KEY, sort=True):
        group = tuple(group)
        base = baselines.get(group)[0]
        steered_scores = rows.pivot(index="item_id", columns="multiplier", values="score")
        matrix = pd.concat([base.rename(0.0), steered_scores], axis=1)
        matrix = matrix[sorted(matrix.columns)]
        slopes = per_item_slopes(matrix).dropna()
        rng = _seeded_rng(seed, ("dose", *group))
        low, high, note = mean_ci(slopes.to_numpy(), rng, n_resamples, confidence)
        complete = matrix.dropna().to_numpy(dtype=float)
        stat = p_inc = p_dec = math.nan
        notes = [note] if note else []
        if complete.shape[1] >= 3 and complete.shape[0] >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inc = sps.page_trend_test(complete)
                dec = sps.page_trend_test(complete[:, ::-1])
            stat, p_inc, p_dec = float(inc.statistic), float(inc.pvalue), float(dec.pvalue)
        else:
            notes.append("Page's L needs ≥3 multipliers (incl. 0) and ≥2 complete items")
        out.append(dict(zip(GROUP_KEY, group)) | {
            "multipliers": ",".join(format_multiplier(m) for m in matrix.columns),
            "n_items": int(slopes.size), "n_complete": int(complete.shape[0]),
            "slope": float(slopes.mean()) if slopes.size else math.nan, "slope_ci_low": low, "slope_ci_high": high,
            "page_L": stat, "p_trend": min(1.0, 2 * min(p_inc, p_dec)) if np.isfinite(p_inc) else math.nan,
            "trend_direction": "" if not np.isfinite(p_inc) else ("increasing" if p_inc <= p_dec else "decreasing"),
            "note": "; ".join(notes),
        })
    dose = pd.DataFrame(out, columns=[*GROUP_KEY, "multipliers", "n_items", "n_complete", "slope", "slope_ci_low",
                                      "slope_ci_high", "page_L", "p_trend", "trend_direction", "note"])
    dose["p_trend_holm"] = adjust_pvalues(dose["p_trend"].to_numpy())[0] if len(dose) else []
    return dose


# ----------------------------------------------------------------------------------------------------
# output


def to_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-safe rows: NaN -> null, numpy scalars -> Python."""
    def clean(v: Any) -> Any:
        if isinstance(v, (np.bool_, bool)):
            return bool(v)
        if isinstance(v, (np.integer,)):
            return int(v)
        if isinstance(v, (float, np.floating)):
            return None if not math.isfinite(v) else float(v)
        return v
    return [{k: clean(v) for k, v in rec.items()} for rec in df.to_dict(orient="records")]


def stats_json(cells: pd.DataFrame, dose: pd.DataFrame, input_path: str) -> dict[str, Any]:
    return {
        "input": input_path,
        "settings": {k: cells.attrs.get(k) for k in
                     ("alpha", "seed", "n_resamples", "n_permutations", "primary_test", "confidence")},
        "correction": {"family": "all cell-vs-multiplier-0 tests in this table", "n_tests": cells.attrs.get("n_tests"),
                       "methods": ["holm", "fdr_bh"], "applied_to": f"p_{cells.attrs.get('primary_test')}"},
        "cells": to_records(cells),
        "dose_response": to_records(dose),
    }


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "-"
    return "<1e-4" if p < 1e-4 else f"{p:.4f}"


def _fmt_num(x: float, digits: int = 3) -> str:
    return "-" if not np.isfinite(x) else f"{x:.{digits}f}"


def _fmt_ci(low: float, high: float, digits: int = 3) -> str:
    return "-" if not (np.isfinite(low) and np.isfinite(high)) else f"[{low:.{digits}f}, {high:.{digits}f}]"


def format_cells(cells: pd.DataFrame) -> str:
    """A readable fixed-width table; columns that never vary (empty site, single metric…) are left out."""
    view = pd.DataFrame({c: cells[c] for c in GROUP_KEY})
    view["mult"] = cells["multiplier"].map(format_multiplier)
    view["n"] = cells["n"]
    view["mean"] = cells["mean"].map(_fmt_num)
    view["95% CI"] = [_fmt_ci(a, b) for a, b in zip(cells["ci_low"], cells["ci_high"])]
    view["diff"] = cells["diff_vs_0"].map(lambda v: "-" if not np.isfinite(v) else f"{v:+.3f}")
    view["diff 95% CI"] = [_fmt_ci(a, b) for a, b in zip(cells["diff_ci_low"], cells["diff_ci_high"])]
    view["p_wilcoxon"] = cells["p_wilcoxon"].map(_fmt_p)
    view["p_perm"] = cells["p_permutation"].map(_fmt_p)
    view["p_holm"] = cells["p_holm"].map(_fmt_p)
    view["p_bh"] = cells["p_bh"].map(_fmt_p)
    view["sig"] = ["*" if s else "" for s in cells["significant"]]
    view["dz"] = cells["cohen_dz"].map(lambda v: _fmt_num(v, 2))
    view["wrong"] = cells["frac_wrong_way"].map(lambda v: _fmt_num(v, 2))
    view["mde"] = cells["mde"].map(_fmt_num)
    view["n_miss"] = cells["n_missing"]
    drop = [c for c in ("task", "metric", "layer", "site", "positions", "condition") if (view[c] == "").all()
            or (c == "task" and (cells["task"] == cells["behaviour"]).all())
            or (c == "metric" and (view[c] == DEFAULT_METRIC).all())]
    if (cells["n_missing"] == 0).all():
        drop.append("n_miss")
    return view.drop(columns=drop).to_string(index=False)


def format_dose(dose: pd.DataFrame) -> str:
    if dose.empty:
        return "(no dose-response: no configuration has a steered multiplier)"
    view = pd.DataFrame({c: dose[c] for c in GROUP_KEY})
    view["multipliers"] = dose["multipliers"]
    view["n"] = dose["n_items"]
    view["slope"] = dose["slope"].map(lambda v: "-" if not np.isfinite(v) else f"{v:+.4f}")
    view["slope 95% CI"] = [_fmt_ci(a, b, 4) for a, b in zip(dose["slope_ci_low"], dose["slope_ci_high"])]
    view["Page L"] = dose["page_L"].map(lambda v: _fmt_num(v, 1))
    view["p_trend"] = dose["p_trend"].map(_fmt_p)
    view["p_trend_holm"] = dose["p_trend_holm"].map(_fmt_p)
    view["direction"] = dose["trend_direction"]
    drop = [c for c in ("task", "metric", "layer", "site", "positions", "condition") if (view[c] == "").all()
            or (c == "task" and (dose["task"] == dose["behaviour"]).all())
            or (c == "metric" and (view[c] == DEFAULT_METRIC).all())]
    return view.drop(columns=drop).to_string(index=False)


# ----------------------------------------------------------------------------------------------------
# command line


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise level for the Holm mark (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed for bootstrap and permutation resampling (default 0)")
    parser.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples per CI (default 2000)")
    parser.add_argument("--n-permutations", type=int, default=9999, help="sign-flip resamples per test (default 9999)")
    parser.add_argument("--test", choices=TESTS, default="wilcoxon",
                        help="test whose p-values are Holm/BH-corrected and marked (default wilcoxon)")


def parse_metrics(value: str) -> str | list[str]:
    return value if value in ("primary", "all") else [m.strip() for m in value.split(",") if m.strip()]


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="long table (.csv/.jsonl) or a sweep / lm_eval output folder")
    parser.add_argument("--json", type=Path, help="write settings, one row per cell and dose-response here")
    parser.add_argument("--csv", type=Path, help="write one row per cell here")
    parser.add_argument("--metrics", default="primary",
                        help="for run folders: 'primary' (default), 'all', or comma-separated metric names")
    add_common_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    if args.n_resamples < 100 or args.n_permutations < 100:
        raise CAAEvalError("--n-resamples and --n-permutations must be at least 100")
    table = load_any(args.input, parse_metrics(args.metrics))
    options = {"seed": args.seed, "n_resamples": args.n_resamples}
    cells = compute_stats(table, alpha=args.alpha, n_permutations=args.n_permutations, primary_test=args.test, **options)
    dose = compute_dose_response(table, **options)
    print(format_cells(cells))
    print()
    print(f"Paired against multiplier 0 on the same items; p_holm/p_bh: {args.test} p-values corrected over "
          f"{cells.attrs['n_tests']} cell-vs-0 tests; * = p_holm < {args.alpha}.")
    print()
    print("Dose-response (per-item OLS slope of score on multiplier; Page's L trend test, two-sided):")
    print(format_dose(dose))
    if args.json:
        write_atomic(args.json, json.dumps(stats_json(cells, dose, str(args.input)), indent=2, allow_nan=False))
        print(f"\nwrote {args.json}")
    if args.csv:
        write_atomic(args.csv, cells.to_csv(index=False))
        print(f"wrote {args.csv}")
    return 0
