"""Datasets: contrast-pair files (CAA format), their validation, and where the CAA data lives."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from caa_eval.errors import CAAEvalError

PAIR_FIELDS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
_ANSWER = re.compile(r"^\s*\(([A-Z])\)")


@dataclass(frozen=True)
class ContrastPair:
    """One CAA item: a question with its choices, and the answers that do / do not show the behaviour."""

    question: str
    answer_matching_behavior: str
    answer_not_matching_behavior: str

    @property
    def matching_letter(self) -> str:
        return _letter(self.answer_matching_behavior)

    @property
    def not_matching_letter(self) -> str:
        return _letter(self.answer_not_matching_behavior)


def _letter(answer: str) -> str:
    m = _ANSWER.match(answer)
    return m.group(1) if m else ""


def read_records(path: str | Path) -> list[dict]:
    """A JSON list or JSONL file as a list of dicts, with errors that name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise CAAEvalError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CAAEvalError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CAAEvalError(f"{path}: invalid JSON on line {lineno}: {exc.msg} (expected a JSON list or JSONL)") from None
    if not isinstance(records, list):
        raise CAAEvalError(f"{path}: expected a JSON list of objects or JSONL, got {type(records).__name__}")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise CAAEvalError(f"{path}: item {i} is {type(rec).__name__}, expected an object")
    return records


def load_contrast_pairs(path: str | Path, require_ab: bool = False) -> list[ContrastPair]:
    """Load and validate contrast pairs; every problem names the item index and the field."""
    path = Path(path)
    records = read_records(path)
    if not records:
        raise CAAEvalError(f"{path}: no items")
    pairs = []
    for i, rec in enumerate(records):
        for field in PAIR_FIELDS:
            value = rec.get(field)
            if value is None:
                raise CAAEvalError(f"{path}: item {i} has no field {field!r} (need {', '.join(PAIR_FIELDS)})")
            if isinstance(value, list) and value and isinstance(value[0], str):
                value = value[0]  # Anthropic MWE files sometimes wrap answers in a list
            if not isinstance(value, str) or not value.strip():
                raise CAAEvalError(f"{path}: item {i} field {field!r} must be a non-empty string")
            rec[field] = value
        pair = ContrastPair(*(rec[f] for f in PAIR_FIELDS))
        for field, letter in (("answer_matching_behavior", pair.matching_letter), ("answer_not_matching_behavior", pair.not_matching_letter)):
            if not letter:
                raise CAAEvalError(f"{path}: item {i} field {field!r} is {rec[field]!r}; expected an answer like \"(A)\"")
            if require_ab and letter not in "AB":
                raise CAAEvalError(f"{path}: item {i} field {field!r} is {rec[field]!r}; A/B tasks need \"(A)\" or \"(B)\"")
        if pair.matching_letter == pair.not_matching_letter:
            raise CAAEvalError(f"{path}: item {i}: matching and non-matching answers are the same letter")
        pairs.append(pair)
    return pairs


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
