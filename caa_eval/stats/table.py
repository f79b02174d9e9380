"""The long table: one row per (item, steering setting), the input of every statistic.

Why strict: a silently mistyped multiplier or a duplicated run would produce confident wrong p-values, so
the table is checked and normalised once, here, and everything downstream can trust its columns.
"""

from __future__ import annotations

import ast
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from caa_eval.errors import CAAEvalError
from caa_eval.files import read_jsonl
from caa_eval.vocab import behaviour_of_task, format_multiplier

__all__ = [
    "REQUIRED",
    "OPTIONAL",
    "LETTER_COLUMN",
    "GROUP_KEY",
    "CELL_KEY",
    "BASELINE_KEY",
    "CONFIG_KEY",
    "BASELINE_CONFIG",
    "SHARED_BEHAVIOUR",
    "DEFAULT_METRIC",
    "format_layer",
    "format_text",
    "cell_label",
    "validate_long_table",
    "load_long_table",
    "MAX_ABS_SCORE",
]

log = logging.getLogger(__name__)

REQUIRED = ("item_id", "behaviour", "multiplier", "score")
LETTER_COLUMN = "matching_letter"  # the letter of an A/B item's behaviour-matching answer (steerability bias)
OPTIONAL = ("task", "layer", "site", "positions", "condition", "metric", "subject", LETTER_COLUMN)
# A cell is one steering configuration; its baseline is matched on BASELINE_KEY (see cells.Baselines).
GROUP_KEY = ["behaviour", "task", "metric", "layer", "site", "positions", "condition"]
CELL_KEY = [*GROUP_KEY, "multiplier"]
BASELINE_KEY = ["behaviour", "task", "metric", "condition"]
CONFIG_KEY = ["layer", "site", "positions"]
BASELINE_CONFIG = ["baseline_layer", "baseline_site", "baseline_positions"]  # which multiplier-0 rows were used
SHARED_BEHAVIOUR = "*"  # a multiplier-0 row that is the baseline for every behaviour on its task
DEFAULT_METRIC = "score"
_BLANK = ("", "nan", "na", "null", "none")
MAX_ABS_SCORE = 1e100  # squares (<= 1e200) and their sums over any real table stay finite in float64


def format_layer(value: Any) -> str:
    """One spelling per layer setting ("13", "10,12", "") so that cells from CSVs and runs group together.

    Args:
        value: an int, float, list, "13", "[10, 12]", None or NaN.
    """
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


def format_text(value: Any) -> str:
    """A free-text key column value: None/NaN -> "", lists joined with ",", surrounding space removed."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(format_text(v) for v in value)
    return str(value).strip()


def _where(origin: str, rows: Iterable[int], unit: str = "row") -> str:
    rows = list(rows)
    shown = ", ".join(str(r) for r in rows[:5]) + (" …" if len(rows) > 5 else "")
    return f"{origin}: {unit}{'s' if len(rows) > 1 else ''} {shown}"


def cell_label(key: Sequence[Any], names: Sequence[str] = CELL_KEY) -> str:
    """`(behaviour=syc, task=…, multiplier=+1)`: a cell as error messages name it (empty keys left out)."""
    parts = []
    for name, value in zip(names, key):
        if name == "multiplier":
            parts.append(f"multiplier={format_multiplier(float(value))}")
        elif value != "":
            parts.append(f"{name}={value}")
    return "(" + ", ".join(parts) + ")"


def validate_long_table(df: pd.DataFrame, origin: str = "table", lines: Sequence[int] | None = None) -> pd.DataFrame:
    """Check and normalise a long table; the returned copy has every column, typed, with no duplicates.

    Rows with behaviour "*" (allowed at multiplier 0 only) are copied to every behaviour of their task, so an
    unsteered MMLU run can serve as the baseline of all behaviour vectors.

    Args:
        df: the table (columns REQUIRED, optionally OPTIONAL and a `source` column).
        origin: the file or folder it came from, for error messages and the default `source`.
        lines: file line numbers of the rows for error messages (default: 0-based row positions).
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

    _normalise_keys(table, origin, where)
    table["multiplier"] = _multipliers(table, where)
    table["score"] = _scores(table, where)
    _check_subjects(table, origin)
    shared = table["behaviour"] == SHARED_BEHAVIOUR
    if (shared & (table["multiplier"] != 0)).any():
        raise CAAEvalError(
            f"{where(shared & (table['multiplier'] != 0))}: behaviour '*' (shared baseline) "
            "is only allowed at multiplier 0; name the behaviour of the steering vector"
        )
    table = _expand_shared(table)
    _check_unique(table, origin)
    columns = ["item_id", *CELL_KEY, "subject", LETTER_COLUMN, "score", "source"]
    extra = [c for c in table.columns if c not in columns]
    return table[columns + extra].sort_values([*CELL_KEY, "item_id"], kind="stable").reset_index(drop=True)


def _normalise_keys(table: pd.DataFrame, origin: str, where: Callable[[pd.Series], str]) -> None:
    """Key columns as text, one spelling each; missing optional columns filled with their default (in place)."""
    for col in ("item_id", "behaviour"):
        table[col] = table[col].map(format_text).astype(object)
        empty = table[col] == ""
        if empty.any():
            raise CAAEvalError(f"{where(empty)}: empty {col}; every row needs one")
    table["task"] = table["task"].map(format_text).astype(object) if "task" in table else ""
    table.loc[table["task"] == "", "task"] = table["behaviour"]
    table["metric"] = table["metric"].map(format_text).astype(object) if "metric" in table else DEFAULT_METRIC
    table.loc[table["metric"] == "", "metric"] = DEFAULT_METRIC
    table["layer"] = table["layer"].map(format_layer).astype(object) if "layer" in table else ""
    for col in ("site", "positions", "condition", "subject", LETTER_COLUMN):
        table[col] = table[col].map(format_text).astype(object) if col in table else ""
    table[LETTER_COLUMN] = table[LETTER_COLUMN].str.strip("() ").str.upper()  # "(A)" as CAA writes it -> "A"
    bad = ~table[LETTER_COLUMN].str.fullmatch(r"[A-Z]?")
    if bad.any():
        shown = table.loc[bad, LETTER_COLUMN].head(3).tolist()
        raise CAAEvalError(f"{where(bad)}: {LETTER_COLUMN} {shown} is not one letter; use A, B or leave it empty")
    table["source"] = table["source"].map(format_text).astype(object) if "source" in table else origin


def _multipliers(table: pd.DataFrame, where: Callable[[pd.Series], str]) -> pd.Series:
    mult = pd.to_numeric(table["multiplier"], errors="coerce")
    bad = mult.isna() | ~np.isfinite(mult.astype(float))
    if bad.any():
        shown = table.loc[bad, "multiplier"].head(3).tolist()
        raise CAAEvalError(f"{where(bad)}: multiplier {shown} is not a finite number; use e.g. -1, 0, 0.5")
    return mult.astype(float) + 0.0  # -0.0 -> 0.0


def _scores(table: pd.DataFrame, where: Callable[[pd.Series], str]) -> pd.Series:
    """Scores as floats; empty cells (a missing judge score) become NaN, anything else unreadable is refused."""
    raw = table["score"].map(lambda v: float(v) if isinstance(v, (bool, np.bool_)) else v)
    score = pd.to_numeric(raw, errors="coerce").astype(float)
    blank = raw.isna() | raw.map(lambda v: isinstance(v, str) and v.strip().lower() in _BLANK)
    bad = score.isna() & ~blank
    if bad.any():
        shown = raw[bad].head(3).tolist()
        raise CAAEvalError(f"{where(bad)}: score {shown} is not a number; leave it empty for a missing judge score")
    if np.isinf(score).any():
        raise CAAEvalError(f"{where(np.isinf(score))}: infinite score; scores must be finite or empty")
    huge = score.abs() > MAX_ABS_SCORE
    if huge.any():
        raise CAAEvalError(
            f"{where(huge)}: score {score[huge].head(3).tolist()} is beyond ±{MAX_ABS_SCORE:.0e}, where "
            "sums of squares overflow and the statistics go wrong; rescale the scores (e.g. divide "
            "them by a constant)"
        )
    return score


def _check_unique(table: pd.DataFrame, origin: str) -> None:
    dup = table.duplicated([*CELL_KEY, "item_id"], keep=False)
    if dup.any():
        first = table[dup].iloc[0]
        same = table[dup & (table["item_id"] == first["item_id"])]
        same = same[(same[CELL_KEY] == first[CELL_KEY]).all(axis=1)]
        sources = sorted(set(same["source"]))
        raise CAAEvalError(
            f"{origin}: item {first['item_id']!r} appears {len(same)} times in cell "
            f"{cell_label(first[CELL_KEY].tolist())} (from {', '.join(sources)}); each item may appear once per "
            "cell: remove the repeated run or give it a different condition"
        )


def _check_subjects(table: pd.DataFrame, origin: str) -> None:
    """A task's items all have a subject or none do, and an item keeps its subject in every cell: the
    subject decides the weight of the item in the per-subject macro mean."""
    has = table["subject"] != ""
    partly = table.groupby("task")["subject"].agg(lambda s: (s != "").any() and (s == "").any())
    if partly.any():
        raise CAAEvalError(
            f"{origin}: task {partly[partly].index[0]!r} has rows with and without a subject; "
            "give every row of the task a subject, or none"
        )
    if has.any():
        subjects = table[has].groupby(["task", "item_id"])["subject"].nunique()
        if (subjects > 1).any():
            task, item = subjects[subjects > 1].index[0]
            raise CAAEvalError(
                f"{origin}: item {item!r} of task {task!r} has several subjects; an item belongs to one subject"
            )


def _expand_shared(table: pd.DataFrame) -> pd.DataFrame:
    """Copy each task's shared ('*') multiplier-0 rows to every behaviour measured on that task: the unsteered
    run is the baseline of every vector. With no vector measured there, the rows stay as the baseline of the
    task's own behaviour (an unsteered A/B run alone), or are ignored with a warning (a shared task alone)."""
    shared = table["behaviour"] == SHARED_BEHAVIOUR
    if not shared.any():
        return table
    own, common = table[~shared], table[shared]
    pieces = [own]
    targets = own[["task", "metric", "condition", "behaviour"]].drop_duplicates()
    for (task, metric, condition), rows in common.groupby(["task", "metric", "condition"], sort=False):
        behaviours = targets[(targets.task == task) & (targets.metric == metric) & (targets.condition == condition)]
        names = list(behaviours["behaviour"]) or [b for b in [behaviour_of_task(str(task))] if b]
        if not names:
            log.warning(
                "shared ('*') baseline rows for task=%s metric=%s condition=%s match no steered behaviour; ignored",
                task,
                metric,
                condition or "(none)",
            )
        for behaviour in names:
            # a behaviour's own baseline at the same configuration wins over the shared one
            have = own[
                (own.behaviour == behaviour)
                & (own.task == task)
                & (own.metric == metric)
                & (own.condition == condition)
                & (own.multiplier == 0)
            ]
            copy = rows.assign(behaviour=behaviour)
            if not have.empty:
                taken = set(map(tuple, have[CONFIG_KEY].to_numpy().tolist()))
                copy = copy[[tuple(r) not in taken for r in copy[CONFIG_KEY].to_numpy().tolist()]]
            pieces.append(copy)
    out = pd.concat(pieces, ignore_index=True)
    if out.empty:
        raise CAAEvalError("only shared ('*') baseline rows found; add steered rows that name a behaviour")
    return out


def _jsonl_lines(path: Path) -> list[int]:
    """Line numbers of the non-blank lines: the rows read_jsonl returns, for error messages."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        return [n for n, line in enumerate(fh, 1) if line.strip()]


def load_long_table(path: str | Path) -> pd.DataFrame:
    """Read a long table from CSV/TSV or JSONL (one object per line) and validate it.

    Args:
        path: a `.csv`, `.tsv`, `.txt` (comma-separated) or `.jsonl`/`.ndjson`/`.json` (JSON lines) file.
    """
    path = Path(path)
    if not path.is_file():
        raise CAAEvalError(f"{path}: no such file; give a CSV or JSONL long table or a run folder")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        records = read_jsonl(path)
        df = pd.DataFrame.from_records(records)
        numbered = _jsonl_lines(path)
        lines: list[int] | None = numbered if len(numbered) == len(records) else None
    elif suffix in (".csv", ".tsv", ".txt"):
        try:
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            reason = str(exc).splitlines()[0]
            raise CAAEvalError(f"{path}: not a readable CSV ({reason}); check quoting and the column count") from None
        except pd.errors.EmptyDataError:
            raise CAAEvalError(
                f"{path}: the file is empty; write a header line {','.join(REQUIRED)} and rows"
            ) from None
        df.columns = [c.strip() for c in df.columns]
        lines = list(range(2, len(df) + 2))  # line 1 is the header
    else:
        raise CAAEvalError(f"{path}: unknown table format {suffix!r}; use .csv, .tsv or .jsonl")
    table = validate_long_table(df, origin=str(path), lines=lines)
    if (table["source"] == str(path)).all():
        table["source"] = path.name
    return table
