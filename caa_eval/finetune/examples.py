"""Finetuning examples in exactly the A/B task's format, and the check that keeps the A/B test set held out.

The context is the A/B task's scored context (chat template, user turn = question with its choices,
assistant turn opened by `(`), the target is `X)`: the answer letter and the closing bracket. Loss is on
those answer tokens only, so the model learns which letter to give, not to reproduce the question.
Tokenisation follows lm-eval's `HFLM._encode_pair` (context and context+answer encoded separately, the
answer tokens are the tail), so the trained tokens are the ones the A/B task scores.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caa_eval import data
from caa_eval.core.prompts import ANSWER_OPENER, ab_answer_prompt
from caa_eval.core.read_rows import add_special_tokens_for
from caa_eval.errors import CAAEvalError
from caa_eval.vocab import BEHAVIOURS, behaviour_key

__all__ = [
    "DIRECTIONS",
    "IGNORE",
    "LOSS_TOKENS",
    "TrainingExample",
    "target_letter",
    "build_examples",
    "TrainingData",
    "training_data",
    "check_held_out",
    "split_holdout",
]

log = logging.getLogger(__name__)

DIRECTIONS = ("pos", "neg")
"""pos: teach the answer matching the behaviour; neg: teach the non-matching answer."""

IGNORE = -100
"""Label of tokens without loss (the value HF's cross-entropy ignores)."""

LOSS_TOKENS = "answer letter and ')' (the tokens after the A/B context's opening '(')"


@dataclass(frozen=True)
class TrainingExample:
    """One tokenised item: the A/B context + target answer, labels set on the answer tokens only."""

    input_ids: list[int]
    labels: list[int]


def target_letter(pair: data.ContrastPair, direction: str) -> str:
    """The letter `direction` teaches for one pair (`pos` = matching the behaviour, `neg` = not matching)."""
    if direction not in DIRECTIONS:
        raise CAAEvalError(f"direction {direction!r} not understood; write pos (toward the behaviour) or neg (away)")
    return pair.matching_letter if direction == "pos" else pair.not_matching_letter


def build_examples(
    tokenizer: Any, pairs: Sequence[data.ContrastPair], direction: str, system_prompt: str | None = None
) -> list[TrainingExample]:
    """Tokenise every pair with its target answer `(X)` in the A/B task's prompt format.

    Args:
        tokenizer: the model's HF tokenizer (its chat template builds the context).
        pairs: A/B contrast pairs (answers like `(A)`).
        direction: `pos` or `neg` (see `DIRECTIONS`).
        system_prompt: optional system message, as the A/B task would place it.
    """
    examples = []
    for i, pair in enumerate(pairs):
        answer = f"{ANSWER_OPENER}{target_letter(pair, direction)})"
        text, letter_char = ab_answer_prompt(tokenizer, pair.question, answer, system_prompt)
        context = text[:letter_char]
        ctx = tokenizer(context, add_special_tokens=add_special_tokens_for(tokenizer, context))["input_ids"]
        whole = tokenizer(text, add_special_tokens=add_special_tokens_for(tokenizer, text))["input_ids"]
        if len(whole) <= len(ctx) or whole[: len(ctx)] != ctx:
            raise CAAEvalError(
                f"item {i}: the tokenizer merges the answer {answer!r} into the context "
                "(the A/B task could not score it either); check the chat template"
            )
        examples.append(TrainingExample(list(whole), [IGNORE] * len(ctx) + list(whole[len(ctx) :])))
    return examples


@dataclass(frozen=True)
class TrainingData:
    """Where the training pairs come from and what they are (recorded beside the adapter)."""

    path: Path
    pairs: list[data.ContrastPair]
    behaviour: str
    sha256: str


def training_data(
    behaviour: str | None = None,
    data_path: str | Path | None = None,
    data_dir: str | Path | None = None,
    held_out: Sequence[str | Path] = (),
) -> TrainingData:
    """The behaviour's A/B generate pairs (or a user file), checked to hold no A/B test item.

    Args:
        behaviour: a CAA behaviour (its `generate` split is used) or, with `data_path`, the label to record
            and whose A/B test set to check against.
        data_path: a contrast-pair file (JSON list or JSONL) instead of CAA's generate split.
        data_dir: CAA data folder (default: `CAA_EVAL_DATA_DIR`, then the user cache).
        held_out: more A/B test files the pairs must not overlap (a custom behaviour's own test file).
    """
    if data_path is not None:
        path = Path(data_path)
    elif behaviour is not None:
        path = data.resolve_behaviour_pairs(behaviour, "generate", data_dir)
    else:
        raise CAAEvalError("name the training data: --behavior NAME (CAA's generate set) or --data FILE")
    pairs = data.load_contrast_pairs(path)
    for i, pair in enumerate(pairs):
        if {pair.matching_letter, pair.not_matching_letter} != {"A", "B"}:
            raise CAAEvalError(
                f"{path}: item {i} answers ({pair.matching_letter}) / ({pair.not_matching_letter}); "
                "finetuning in the A/B format needs the answers (A) and (B)"
            )
    if behaviour is None:
        behaviour = path.parent.name if path.stem.startswith("generate_dataset") else path.stem
    behaviour = behaviour_key(behaviour)
    check_held_out(path, behaviour if behaviour in BEHAVIOURS else None, data_dir)
    for test_path in held_out:
        try:
            data.check_no_overlap(test_path, path)
        except CAAEvalError as exc:
            raise CAAEvalError(f"refusing to finetune on A/B test items: {exc}") from None
    return TrainingData(path, pairs, behaviour, data.file_sha256(path))


def check_held_out(
    pairs_path: str | Path, behaviour: str | None = None, data_dir: str | Path | None = None
) -> list[Path]:
    """Refuse training pairs that contain A/B test items (the test set must stay held out).

    Checks the behaviour's A/B test file, or every CAA behaviour's when `behaviour` is None. Returns the
    test files checked; when none can be found (no CAA data installed) it warns that nothing was checked.

    Args:
        pairs_path: the training contrast-pair file.
        behaviour: a CAA behaviour, or None for all of them.
        data_dir: CAA data folder (default: `CAA_EVAL_DATA_DIR`, then the user cache).
    """
    checked = []
    for name in [behaviour] if behaviour else BEHAVIOURS:
        try:
            test_path = data.resolve_behaviour_pairs(name, split="test", data_dir=data_dir)
        except CAAEvalError:
            continue
        try:
            data.check_no_overlap(test_path, pairs_path)
        except CAAEvalError as exc:
            raise CAAEvalError(f"refusing to finetune on A/B test items: {exc}") from None
        checked.append(Path(test_path))
    if not checked:
        log.warning(
            "no CAA A/B test file found (set CAA_EVAL_DATA_DIR); could not check that %s holds no test item", pairs_path
        )
    return checked


def split_holdout(pairs: Sequence[data.ContrastPair], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training item indices, held-out item indices): a seeded random `fraction` of the items is never
    trained on, so p(match) on it says whether the finetune generalises beyond its own items.

    (The pair loader refuses repeated questions, so disjoint items are disjoint questions.)

    Args:
        pairs: the training data's pairs, in file order.
        fraction: share of the items held out, in (0, 1).
        seed: the finetune's seed (the same seed gives the same slice).
    """
    n_out = round(len(pairs) * fraction)
    if n_out < 1 or n_out >= len(pairs):
        raise CAAEvalError(
            f"--holdout-fraction {fraction:g} of {len(pairs)} pairs leaves {n_out} held out and "
            f"{len(pairs) - n_out} to train on; use more pairs or another fraction"
        )
    held = set(random.Random(f"holdout-{seed}").sample(range(len(pairs)), n_out))
    return [i for i in range(len(pairs)) if i not in held], sorted(held)
