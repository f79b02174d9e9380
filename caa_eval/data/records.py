"""The reader of data record files (contrast pairs, test items, a user's task data): a JSON list or JSONL.

A data file with a mistake should stop the run with one line naming the file and the line, never a
traceback; a file in another encoding is refused rather than read as mojibake. JSONL itself is parsed by
`caa_eval.files.read_jsonl`, the project's one JSONL parser (also used for lm-eval samples files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from caa_eval.errors import CAAEvalError
from caa_eval.files import read_jsonl

__all__ = ["read_text", "read_records"]

_JSON_TYPES = {
    dict: "object",
    list: "list",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def read_text(path: str | Path) -> str:
    """A data file's text, decoded as UTF-8 (a leading byte-order mark is allowed).

    Args:
        path: the file to read.

    Raises:
        CAAEvalError: the file is missing or is not UTF-8 (one line naming the file and the first bad byte).
    """
    path = Path(path)
    if not path.is_file():
        raise CAAEvalError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise CAAEvalError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); re-save the file as UTF-8"
        ) from None


def _kind(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON list file or a JSONL file (one object per line; blank lines are skipped).

    JSONL goes through `caa_eval.files.read_jsonl`, the project's one JSONL parser; this adds the JSON-list
    form, the UTF-8 check and a clear word for a single pretty-printed object.

    Args:
        path: a file holding one JSON list of objects, or JSONL (decided by the content, not the suffix).

    Raises:
        CAAEvalError: one line naming the file and the line (JSONL) or line/column (JSON) of the problem.
    """
    text = read_text(path)
    body = text.strip()
    if body.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CAAEvalError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise CAAEvalError(f"{path}: item {i} is a JSON {_kind(rec)}, expected an object")
        return records
    if body.startswith("{") and "\n" in body and _is_one_object(body):
        raise CAAEvalError(
            f"{path}: holds one JSON object; expected a JSON list of objects or JSONL (one object per line)"
        )
    return read_jsonl(path)


def _is_one_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False
