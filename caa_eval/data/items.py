"""Test items as lm-eval docs: CAA's A/B probes (optionally letter-balanced) and open-ended questions.

The A/B rows carry what the task YAMLs and metrics need (user prompt, matching letter, whether the item
can be scored); the letter-balanced rows also carry the prompt with the two options' texts exchanged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caa_eval.data.pairs import check_unique, load_contrast_pairs
from caa_eval.data.records import read_records
from caa_eval.errors import CAAEvalError

__all__ = ["NON_AB_POLICIES", "ABItems", "swap_ab", "load_ab_items", "load_open_items"]

NON_AB_POLICIES = ("exclude", "zero", "error")
"""What to do with items whose answers are not (A)/(B): leave out, score 0 (CAA's own rule), or refuse."""

_OPTION = re.compile(r"(?m)^([ \t]*)\(([A-Z])\)")
log = logging.getLogger(__name__)


def swap_ab(question: str) -> str:
    """The question with the texts of options (A) and (B) exchanged (the letters stay in place).

    Options are lines starting with `(X)` (any indent); an option's text runs to the next option line or the
    end. Used by the letter-balanced tasks to cancel letter-position bias.

    Args:
        question: a question holding exactly one `(A)` and one `(B)` option line.
    """
    marks = list(_OPTION.finditer(question))
    letters = [m.group(2) for m in marks]
    if letters.count("A") != 1 or letters.count("B") != 1:
        raise CAAEvalError(f"cannot swap options: expected one '(A)' and one '(B)' option line in {question[:80]!r}...")
    spans: dict[str, tuple[int, int]] = {}
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(question)
        spans[m.group(2)] = (m.end(), end)
    (a0, a1), (b0, b1) = spans["A"], spans["B"]
    first, second = sorted([(a0, a1, "A"), (b0, b1, "B")])
    texts = {"A": question[a0:a1], "B": question[b0:b1]}

    def body(letter: str) -> str:
        # keep each slot's own trailing newline(s): swap only the option text proper
        own, other = texts[letter], texts["B" if letter == "A" else "A"]
        return other.rstrip("\n") + own[len(own.rstrip("\n")) :]

    return (
        question[: first[0]] + body(first[2]) + question[first[1] : second[0]] + body(second[2]) + question[second[1] :]
    )


@dataclass
class ABItems:
    """A/B test rows for lm-eval plus which items were left out (indices in the file)."""

    rows: list[dict[str, Any]]
    excluded: list[int]
    path: Path


def _swapped(prompt: str, path: Path, i: int) -> str:
    try:
        return swap_ab(prompt)
    except CAAEvalError as exc:
        raise CAAEvalError(f"{path}: item {i}: {exc}") from None


def load_ab_items(
    path: str | Path, behaviour: str = "", non_ab: str = "exclude", balanced: bool = False, warn: bool = True
) -> ABItems:
    """Validated A/B test items as lm-eval docs (validation as for extraction: `load_contrast_pairs`).

    Items whose answers are not (A)/(B) (4 survival-instinct test items are (C)/(E)) cannot be scored as
    p(A)/(p(A)+p(B)).

    Args:
        path: JSON/JSONL test items in the contrast-pair format.
        behaviour: name written into every row (the judge and stats group by it).
        non_ab: `exclude` (default; logged), `zero` (CAA's scoring: p_match = 0) or `error`.
        balanced: add `user_prompt_swapped` to every row; non-A/B items are then always left out.
        warn: log the left-out items.
    """
    if non_ab not in NON_AB_POLICIES:
        raise CAAEvalError(f"caa_non_ab={non_ab!r}; choose from {', '.join(NON_AB_POLICIES)}")
    path = Path(path)
    rows: list[dict[str, Any]] = []
    excluded: list[int] = []
    for i, p in enumerate(load_contrast_pairs(path)):
        is_ab = {p.matching_letter, p.not_matching_letter} == {"A", "B"}
        if not is_ab:
            if non_ab == "error":
                raise CAAEvalError(
                    f"{path}: item {i} answers {p.answer_matching_behavior!r}/{p.answer_not_matching_behavior!r}; "
                    "A/B tasks need (A) and (B) (set caa_non_ab to 'exclude' or 'zero' to keep going)"
                )
            if non_ab == "exclude" or balanced:
                excluded.append(i)
                continue
        prompt = p.question.strip()
        row: dict[str, Any] = {
            "item": i,
            "behaviour": behaviour,
            "question": p.question,
            "user_prompt": prompt,  # what the model sees as the user turn (stripped, as CAA does)
            "answer_matching_behavior": p.answer_matching_behavior,
            "answer_not_matching_behavior": p.answer_not_matching_behavior,
            "matching": p.matching_letter,
            "not_matching": p.not_matching_letter,
            "target": p.matching_letter,
            "scored": is_ab,
        }
        if balanced:
            row["user_prompt_swapped"] = _swapped(prompt, path, i)
        rows.append(row)
    if excluded and warn:
        log.warning(
            "%s: %d item(s) whose answers are not (A)/(B) left out (items %s); %s",
            path,
            len(excluded),
            excluded,
            "balanced tasks always leave them out" if balanced else "set caa_non_ab=zero to score them 0 as CAA does",
        )
    if not rows:
        raise CAAEvalError(f"{path}: no A/B items left to score")
    return ABItems(rows, excluded, path)


def load_open_items(path: str | Path, behaviour: str = "") -> list[dict[str, Any]]:
    """Open-ended questions as lm-eval docs; `question` is what the judge reads.

    Args:
        path: JSON/JSONL of `{"question": ...}` items.
        behaviour: name written into every row.
    """
    path = Path(path)
    records = read_records(path)
    if not records:
        raise CAAEvalError(f"{path}: no items")
    rows: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        q = rec.get("question")
        if not isinstance(q, str) or not q.strip():
            raise CAAEvalError(f"{path}: item {i} needs a non-empty string field 'question'")
        rows.append({"item": i, "behaviour": behaviour, "question": q, "user_prompt": q.strip()})
    check_unique([r["question"] for r in rows], path)
    return rows
