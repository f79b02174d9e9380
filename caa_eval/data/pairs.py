"""Contrast pairs in CAA's format and the checks every consumer of them shares.

A pair is a question (with its `(A) …`/`(B) …` choices) plus the answer that shows the behaviour and the
one that does not. Extraction and the A/B tasks read pairs through `load_contrast_pairs`, so a file that
one of them refuses (bad field, same letter twice, a repeated or contradictory question) the other refuses too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from caa_eval.data.records import read_records
from caa_eval.errors import CAAEvalError

__all__ = [
    "PAIR_FIELDS",
    "ContrastPair",
    "answer_letter",
    "load_contrast_pairs",
    "check_unique",
    "check_no_overlap",
    "file_sha256",
]

PAIR_FIELDS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
_ANSWER = re.compile(r"^\s*\(([A-Z])\)")


def answer_letter(answer: str) -> str:
    """`"(A)"` or `" (B) Yes"` -> the letter; "" when the answer does not start like `(X)`."""
    m = _ANSWER.match(answer)
    return m.group(1) if m else ""


@dataclass(frozen=True)
class ContrastPair:
    """One CAA item: a question with its choices, and the answers that do / do not show the behaviour."""

    question: str
    answer_matching_behavior: str
    answer_not_matching_behavior: str

    @property
    def matching_letter(self) -> str:
        return answer_letter(self.answer_matching_behavior)

    @property
    def not_matching_letter(self) -> str:
        return answer_letter(self.answer_not_matching_behavior)


def check_unique(questions: Sequence[str], path: str | Path, answers: Sequence[tuple[str, str]] | None = None) -> None:
    """Each question may appear once in a file: a repeat counts twice, a repeat with swapped answers contradicts itself.

    Args:
        questions: the items' questions, in file order (compared without surrounding whitespace).
        path: the file, for the message.
        answers: (matching, not matching) per item, to say whether a repeat is a duplicate or a conflict.

    Raises:
        CAAEvalError: naming both items.
    """
    seen: dict[str, int] = {}
    for i, q in enumerate(questions):
        key = q.strip()
        if key not in seen:
            seen[key] = i
            continue
        j = seen[key]
        kind = ""
        if answers is not None:
            if answers[i] == answers[j]:
                kind = " (a duplicate pair)"
            elif answers[i] == answers[j][::-1]:
                kind = " with the answers swapped (a conflicting pair)"
        raise CAAEvalError(f"{path}: item {i} repeats the question of item {j}{kind}; keep one of them")


def load_contrast_pairs(path: str | Path, free_text_answers: bool = False) -> list[ContrastPair]:
    """Load and validate contrast pairs; every problem is one line naming the file, the item and the field.

    Args:
        path: JSON list or JSONL of {question, answer_matching_behavior, answer_not_matching_behavior}.
        free_text_answers: answers are whole replies, not `(A)`/`(B)` (extraction with read="answer_mean").
    """
    path = Path(path)
    records = read_records(path)
    if not records:
        raise CAAEvalError(f"{path}: no items")
    pairs = []
    for i, rec in enumerate(records):
        values = []
        for field in PAIR_FIELDS:
            value = rec.get(field)
            if value is None:
                raise CAAEvalError(f"{path}: item {i} has no field {field!r} (need {', '.join(PAIR_FIELDS)})")
            if isinstance(value, list) and value and isinstance(value[0], str):
                value = value[0]  # Anthropic's model-written-evals files sometimes wrap answers in a list
            if not isinstance(value, str) or not value.strip():
                raise CAAEvalError(f"{path}: item {i} field {field!r} must be a non-empty string")
            values.append(value)
        pair = ContrastPair(*values)
        if free_text_answers:
            if pair.answer_matching_behavior.strip() == pair.answer_not_matching_behavior.strip():
                raise CAAEvalError(f"{path}: item {i}: matching and non-matching answers are the same text")
        else:
            for field, letter in (
                ("answer_matching_behavior", pair.matching_letter),
                ("answer_not_matching_behavior", pair.not_matching_letter),
            ):
                if not letter:
                    raise CAAEvalError(
                        f'{path}: item {i} field {field!r} is {getattr(pair, field)!r}; expected an answer like "(A)"'
                    )
            if pair.matching_letter == pair.not_matching_letter:
                raise CAAEvalError(f"{path}: item {i}: matching and non-matching answers are the same letter")
        pairs.append(pair)
    check_unique([p.question for p in pairs], path, [_answer_key(p, free_text_answers) for p in pairs])
    return pairs


def _answer_key(pair: ContrastPair, free_text: bool) -> tuple[str, str]:
    if free_text:
        return pair.answer_matching_behavior.strip(), pair.answer_not_matching_behavior.strip()
    return pair.matching_letter, pair.not_matching_letter


def check_no_overlap(test_path: str | Path, pairs_path: str | Path) -> None:
    """Test questions must not be among the vector's contrast pairs (that would measure memorised pairs).

    Args:
        test_path: the test items (JSON/JSONL with a `question` field).
        pairs_path: the contrast pairs the vector was extracted from.
    """
    pairs = {str(r.get("question", "")).strip() for r in read_records(pairs_path)}
    for i, rec in enumerate(read_records(test_path)):
        if str(rec.get("question", "")).strip() in pairs:
            raise CAAEvalError(
                f"{test_path}: item {i} also appears in the contrast pairs {pairs_path}; use disjoint files"
            )


def file_sha256(path: str | Path) -> str:
    """Full SHA-256 of a file, read in blocks (data files are recorded and checked by this digest).

    Args:
        path: any file.
    """
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
