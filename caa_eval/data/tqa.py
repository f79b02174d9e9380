"""TruthfulQA as CAA ran it: two options per question (the best answer and one incorrect one), letters A/B.

Nothing is shipped: CAA's `datasets/test/truthfulqa/truthful_qa.json` (817 items, 32 categories) is read at
run time from the CAA data folder (`caa-eval data download` fetches it with its recorded SHA-256). The user
turn follows the two-option MMLU rule (`MMLU_PROMPT`, the question keeping CAA's one-line preamble); which
option is (A) is drawn from a seed, balanced within every category, so that a model's letter preference
cancels in the per-category means. Seed `caa` keeps the letters of CAA's file (A 419, B 398).
"""

from __future__ import annotations

import random
import re
from typing import Any

from caa_eval.data.locate import caa_data_file
from caa_eval.data.mmlu import MMLU_PROMPT
from caa_eval.data.records import read_records
from caa_eval.errors import CAAEvalError

__all__ = ["TQA_FILE", "CAA_LETTERS", "tqa_category_suffix", "tqa_categories", "tqa_rows"]

TQA_FILE = "test/truthfulqa/truthful_qa.json"
"""CAA's two-option TruthfulQA, relative to its datasets/ folder."""
CAA_LETTERS = "caa"
"""The `tqa_seed` that keeps CAA's own letter order instead of drawing one."""
_CHOICES = "\n\nChoices:\n"
_FIELDS = ("prompt", "correct", "incorrect", "correct_full_text", "incorrect_full_text", "category")


def tqa_category_suffix(category: str) -> str:
    """Task-name form of a category: `Myths and Fairytales` -> `myths_and_fairytales`."""
    return re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_")


def _question(rec: dict[str, Any], n: int) -> str:
    """The question part of CAA's prompt (preamble + question), checked by rebuilding the whole prompt."""
    missing = [f for f in _FIELDS if not isinstance(rec.get(f), str)]
    if missing:
        raise CAAEvalError(f"{TQA_FILE} item {n}: missing field(s) {missing}; is this CAA's file?")
    head, sep, _ = rec["prompt"].partition(_CHOICES)
    letter = rec["correct"].strip("()")
    texts = (rec["correct_full_text"], rec["incorrect_full_text"])
    a, b = texts if letter == "A" else texts[::-1]
    if not sep or letter not in "AB" or MMLU_PROMPT.format(question=head, a=a, b=b) != rec["prompt"]:
        raise CAAEvalError(
            f"{TQA_FILE} item {n}: the prompt is not '<question>\\n\\nChoices:\\n(A) …\\n(B) …' with the answers "
            "given; check the file with `caa-eval data status --verify`"
        )
    return head


def _letters(records: list[dict[str, Any]], seed: int | str) -> list[str]:
    """The correct letter of every item: half A, half B within each category, in a seeded order."""
    if str(seed) == CAA_LETTERS:
        return [r["correct"].strip("()") for r in records]
    by_category: dict[str, list[int]] = {}
    for n, rec in enumerate(records):
        by_category.setdefault(rec["category"], []).append(n)
    out = [""] * len(records)
    for category, idx in by_category.items():
        rng = random.Random(f"{seed}:{category}")
        half = len(idx) // 2
        letters = ["A"] * half + ["B"] * half + ([rng.choice("AB")] if len(idx) % 2 else [])
        rng.shuffle(letters)
        for n, letter in zip(idx, letters):
            out[n] = letter
    return out


def _read(data_dir: Any) -> list[dict[str, Any]]:
    records = read_records(caa_data_file(TQA_FILE, data_dir))
    if not records:
        raise CAAEvalError(f"{TQA_FILE}: no items")
    return records


def tqa_categories(data_dir: Any = None) -> list[str]:
    """The categories of CAA's TruthfulQA file, sorted (32 in CAA's file).

    Args:
        data_dir: explicit CAA datasets/ folder (else $CAA_EVAL_DATA_DIR, then the user cache).
    """
    return sorted({str(r.get("category")) for r in _read(data_dir)})


def tqa_rows(category: str | None = None, seed: int | str = 0, data_dir: Any = None) -> list[dict[str, Any]]:
    """CAA's TruthfulQA items as two-option docs (prompt rule of `MMLU_PROMPT`), letters drawn from `seed`.

    The draw covers the whole file, so a category's rows are the same whichever categories are asked for.

    Args:
        category: one category (CAA's spelling, e.g. `Misconceptions`), or None for all 817 items in file order.
        seed: an int for balanced seeded letters (task metadata `tqa_seed`), or `caa` for CAA's own letters.
        data_dir: explicit CAA datasets/ folder (else $CAA_EVAL_DATA_DIR, then the user cache).
    """
    records = _read(data_dir)
    if str(seed) != CAA_LETTERS and not str(seed).lstrip("-").isdigit():
        raise CAAEvalError(f"tqa_seed={seed!r}: write an integer, or {CAA_LETTERS} for CAA's own letter order")
    questions = [_question(r, n) for n, r in enumerate(records)]
    letters = _letters(records, int(seed) if str(seed) != CAA_LETTERS else CAA_LETTERS)
    if category is not None and category not in {r["category"] for r in records}:
        known = ", ".join(sorted({r["category"] for r in records}))
        raise CAAEvalError(f"unknown TruthfulQA category {category!r}; choose from {known}")
    rows = []
    for n, (rec, question, letter) in enumerate(zip(records, questions, letters)):
        if category is not None and rec["category"] != category:
            continue
        right, wrong = rec["correct_full_text"], rec["incorrect_full_text"]
        a, b = (right, wrong) if letter == "A" else (wrong, right)
        prompt = MMLU_PROMPT.format(question=question, a=a, b=b)
        rows.append(
            {
                "prompt": prompt,
                "user_prompt": prompt.strip(),  # the user turn: CAA strips it before templating
                "correct": letter,
                "incorrect": "B" if letter == "A" else "A",
                "correct_full_text": right,
                "incorrect_full_text": wrong,
                "category": rec["category"],
                "tqa_row": n,
                "target": letter,
            }
        )
    return rows
