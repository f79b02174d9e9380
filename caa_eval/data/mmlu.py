"""MMLU as CAA used it: two options per question (the gold answer and one wrong one), letters A/B.

Nothing is shipped: CAA's 570-item subset is rebuilt from the MMLU test CSVs with the recorded index in
`caa_eval.data.facts` (same prompts, letters and order as CAA's `datasets/test/mmlu/mmlu.json`); the full
variant draws the wrong option and the letter order per question from a seed.
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caa_eval.data.facts import MMLU_FILES, MMLU_SUBSET
from caa_eval.data.locate import FETCH_MMLU_HINT, locate_mmlu
from caa_eval.data.records import read_text
from caa_eval.errors import CAAEvalError

__all__ = [
    "MMLU_PROMPT",
    "MMLUQuestion",
    "mmlu_subjects",
    "mmlu_subset_size",
    "read_mmlu_subject",
    "mmlu_subset_rows",
    "mmlu_full_rows",
]

MMLU_PROMPT = "{question}\n\nChoices:\n(A) {a}\n(B) {b}"
"""CAA's two-option MMLU prompt (the user turn)."""

_LETTERS = "ABCD"
_HF_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


@dataclass(frozen=True)
class MMLUQuestion:
    """One MMLU test question with its four choices."""

    question: str
    choices: tuple[str, str, str, str]
    answer: int  # index of the correct choice


def mmlu_subjects() -> list[str]:
    """The 57 MMLU subjects (file stems without `_test`)."""
    return sorted(name[: -len("_test.csv")] for name in MMLU_FILES)


def mmlu_subset_size(subject: str) -> int:
    """How many items CAA's subset has for `subject` (10 for each of the 57; 0 for an unknown name).

    Args:
        subject: an MMLU subject, e.g. `anatomy`.
    """
    return sum(len(tokens.split()) for subj, tokens in MMLU_SUBSET if subj == subject)


def read_mmlu_subject(subject: str, mmlu_dir: str | Path | None = None) -> list[MMLUQuestion]:
    """One subject's test questions from `<subject>_test.csv`.

    Reads both the HF-export layout (header `question,choice0..3,answer` with a 0-based index) and the
    original headerless hendrycks layout (`question,A,B,C,D,letter`).

    Args:
        subject: an MMLU subject, e.g. `anatomy`.
        mmlu_dir: explicit CSV folder (else $CAA_EVAL_MMLU_DIR, then the user cache).
    """
    loc = locate_mmlu(mmlu_dir)
    path = loc.path / f"{subject}_test.csv"
    if not path.is_file():
        if subject not in mmlu_subjects():
            raise CAAEvalError(f"unknown MMLU subject {subject!r}; choose from {', '.join(mmlu_subjects())}")
        raise CAAEvalError(
            f"{path.name} missing from the MMLU folder {loc.path} (from {loc.source}); {FETCH_MMLU_HINT}"
        )
    records = list(csv.reader(io.StringIO(read_text(path), newline="")))
    header = bool(records) and [c.strip().lower() for c in records[0]] == _HF_HEADER
    if header:
        records = records[1:]
    out = []
    for n, rec in enumerate(records):
        if len(rec) != 6:
            raise CAAEvalError(f"{path}: data row {n} has {len(rec)} fields, expected 6 (question, 4 choices, answer)")
        ans = rec[5].strip()
        if header:
            idx = int(ans) if ans.isdigit() else -1
        else:
            idx = _LETTERS.find(ans) if len(ans) == 1 else -1
        if not 0 <= idx < 4:
            raise CAAEvalError(f"{path}: data row {n} has answer {ans!r}, expected {'0-3' if header else 'A-D'}")
        out.append(MMLUQuestion(rec[0], (rec[1], rec[2], rec[3], rec[4]), idx))
    return out


def _row(subject: str, row: int, q: MMLUQuestion, wrong: int, correct_letter: str) -> dict[str, Any]:
    right_text, wrong_text = q.choices[q.answer], q.choices[wrong]
    a, b = (right_text, wrong_text) if correct_letter == "A" else (wrong_text, right_text)
    prompt = MMLU_PROMPT.format(question=q.question, a=a, b=b)
    return {
        "prompt": prompt,  # exactly CAA's mmlu.json field
        "user_prompt": prompt.strip(),  # the user turn: CAA strips it before templating
        "correct": correct_letter,
        "incorrect": "B" if correct_letter == "A" else "A",
        "correct_full_text": right_text,
        "incorrect_full_text": wrong_text,
        "category": subject,
        "mmlu_row": row,
        "target": correct_letter,
    }


def mmlu_subset_rows(subject: str | None = None, mmlu_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """CAA's two-option MMLU items (10 per subject), rebuilt from the MMLU CSVs with the recorded index.

    Args:
        subject: one subject, or None for all 570 items in CAA's order.
        mmlu_dir: explicit CSV folder (else $CAA_EVAL_MMLU_DIR, then the user cache).
    """
    if subject is not None and not mmlu_subset_size(subject):
        raise CAAEvalError(f"unknown MMLU subject {subject!r}; choose from {', '.join(mmlu_subjects())}")
    rows = []
    for subj, tokens in MMLU_SUBSET:
        if subject is not None and subj != subject:
            continue
        questions = read_mmlu_subject(subj, mmlu_dir)
        for token in tokens.split():
            row, right, wrong, letter = token.split(".")
            if int(row) >= len(questions) or questions[int(row)].answer != int(right):
                raise CAAEvalError(
                    f"MMLU {subj} row {row}: does not match CAA's subset; the CSVs are not the "
                    "expected MMLU test split (check them with `caa-eval data status --verify`)"
                )
            rows.append(_row(subj, int(row), questions[int(row)], int(wrong), letter))
    return rows


def mmlu_full_rows(subject: str, seed: int = 0, mmlu_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every test question of a subject in CAA's two-option form: gold + one seeded wrong option, seeded letters.

    The draw depends only on (seed, subject, row), so it is the same for any subset or order of subjects.

    Args:
        subject: an MMLU subject.
        seed: the draw's seed (task metadata `mmlu_seed`).
        mmlu_dir: explicit CSV folder (else $CAA_EVAL_MMLU_DIR, then the user cache).
    """
    rows = []
    for n, q in enumerate(read_mmlu_subject(subject, mmlu_dir)):
        rng = random.Random(f"{seed}:{subject}:{n}")
        wrong = rng.choice([i for i in range(4) if i != q.answer])
        rows.append(_row(subject, n, q, wrong, rng.choice("AB")))
    return rows
