"""Which token a contrast pair's prompts are read at: CAA's answer letter in `(X)` after the chat-templated
user turn, tokenised exactly as lm-eval tokenises a scored request (or, for the demo's full-text answers, the
span of the answer's tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from caa_eval import data
from caa_eval.core.prompts import ab_answer_prompt, prompt_for
from caa_eval.errors import CAAEvalError

__all__ = [
    "READ_RULES",
    "ReadRow",
    "answer_row",
    "answer_span_row",
    "add_special_tokens_for",
    "check_read",
    "build_rows",
]


@dataclass
class ReadRow:
    """One prompt of a pair: token ids, and the index of the answer-letter token to read (or, for
    `read="answer_mean"`, the span of answer tokens to average)."""

    ids: list[int]
    read: int
    span: tuple[int, int] | None = None


READ_RULES = {
    "letter": "answer_letter: token of the letter in '(X)' after the chat-templated user turn",
    "answer_mean": "answer_mean: mean over the answer's tokens after the chat-templated user turn",
}


def answer_row(tokenizer: Any, question: str, answer: str, system_prompt: str | None = None) -> ReadRow:
    """Tokenise the A/B context + answer (`(A)`) as lm-eval tokenises a scored request, and locate the letter."""
    text, letter_char = ab_answer_prompt(tokenizer, question, answer, system_prompt)
    enc = tokenizer(text, add_special_tokens=add_special_tokens_for(tokenizer, text), return_offsets_mapping=True)
    for i, (start, end) in enumerate(enc["offset_mapping"]):
        if start <= letter_char < end:
            return ReadRow(list(enc["input_ids"][: i + 1]), i)
    raise CAAEvalError(f"cannot locate the answer letter of {answer!r} in the tokenised prompt")


def answer_span_row(tokenizer: Any, question: str, answer: str, system_prompt: str | None = None) -> ReadRow:
    """Tokenise prompt + free-text answer and mark the answer's tokens (for `read="answer_mean"`)."""
    prompt = prompt_for(tokenizer, question, system_prompt, answer_prefix=None)
    text = prompt + answer.strip()
    enc = tokenizer(text, add_special_tokens=add_special_tokens_for(tokenizer, text), return_offsets_mapping=True)
    start = next((i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > len(prompt)), None)
    if start is None:
        raise CAAEvalError(f"answer {answer!r} produced no tokens after the prompt")
    ids = list(enc["input_ids"])
    return ReadRow(ids, len(ids) - 1, (start, len(ids)))


def add_special_tokens_for(tokenizer: Any, text: str) -> bool:
    """As lm-eval's HFLM.tok_encode: add the tokenizer's special tokens unless the text already starts with BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def check_read(read: str) -> None:
    """Refuse a read rule other than `READ_RULES`' (before a model is loaded, and again where rows are built).

    Args:
        read: `letter` or `answer_mean`.
    """
    if read not in READ_RULES:
        raise CAAEvalError(f"read={read!r}: use one of {', '.join(READ_RULES)}")


def build_rows(
    tokenizer: Any, pairs: Sequence[data.ContrastPair], system_prompt: str | None = None, read: str = "letter"
) -> list[tuple[ReadRow, ReadRow]]:
    """Both prompts of every pair as token rows with their read positions."""
    check_read(read)
    make = answer_row if read == "letter" else answer_span_row
    return [
        (
            make(tokenizer, pair.question, pair.answer_matching_behavior, system_prompt),
            make(tokenizer, pair.question, pair.answer_not_matching_behavior, system_prompt),
        )
        for pair in pairs
    ]
