"""The one prompt rule shared by extraction, the A/B tasks and the steering positions.

CAA's A/B context is the model's chat template with the question as the user turn, the assistant turn
opened with `(`; the vector is read at the answer letter that follows, and steering starts at the last
token of the chat-templated prompt. For Llama-2-chat this gives `<s>[INST] {q} [/INST] (` and
`… [/INST] (A)` token for token (the space before `(` comes from the template's assistant turn; without
it the Llama-2 tokenizer merges `](`). lm-eval builds the A/B request through `render_prompt` too
(`caa_eval.lmeval.tasks.CAATask`), so extraction and evaluation cannot drift apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from caa_eval.errors import CAAEvalError

__all__ = [
    "ANSWER_OPENER",
    "Renderer",
    "chat_messages",
    "render_prompt",
    "tokenizer_renderer",
    "base_prompt",
    "prompt_for",
    "ab_answer_prompt",
    "prompt_ids",
]

log = logging.getLogger(__name__)

ANSWER_OPENER = "("
"""What the assistant turn starts with in CAA's A/B protocol; the answer letter comes next."""

Renderer = Callable[..., str]
"""`render(messages, add_generation_prompt=bool) -> str`: lm-eval's HFLM.apply_chat_template has this shape."""


def chat_messages(
    question: str, system_prompt: str | None = None, answer_prefix: str | None = None
) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": question})
    if answer_prefix:
        messages.append({"role": "assistant", "content": answer_prefix})
    return messages


def render_prompt(
    render: Renderer, question: str, system_prompt: str | None = None, answer_prefix: str | None = ANSWER_OPENER
) -> str:
    """The chat-templated prompt, ending with the assistant turn opened by `answer_prefix` (if any).

    Args:
        render: renders chat messages (see `Renderer`); `tokenizer_renderer(tok)` or lm-eval's own.
        question: the user turn (for A/B items: the question with its `(A) … (B) …` choices).
        system_prompt: optional system message (placed where the model's template puts it).
        answer_prefix: text the assistant turn starts with; None for open-ended generation.
    """
    messages = chat_messages(question, system_prompt, answer_prefix)
    return render(messages, add_generation_prompt=not answer_prefix)


def tokenizer_renderer(tokenizer: Any) -> Renderer:
    """A renderer from an HF tokenizer's chat template, exactly as lm-eval's HFLM calls it."""

    def render(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    return render


def base_prompt(question: str, answer_prefix: str | None = None) -> str:
    """CAA's format for base models without a chat template: `Input: {q}\\nResponse: {answer}`."""
    return f"Input: {question.strip()}\nResponse:" + (f" {answer_prefix}" if answer_prefix else "")


def prompt_for(
    tokenizer: Any, question: str, system_prompt: str | None = None, answer_prefix: str | None = ANSWER_OPENER
) -> str:
    """`render_prompt` with the tokenizer's template, or CAA's base-model format when it has none."""
    if getattr(tokenizer, "chat_template", None):
        return render_prompt(tokenizer_renderer(tokenizer), question, system_prompt, answer_prefix)
    log.warning("tokenizer has no chat template; using 'Input: …\\nResponse:' (CAA's base-model format)")
    return base_prompt(question, answer_prefix)


def ab_answer_prompt(tokenizer: Any, question: str, answer: str, system_prompt: str | None = None) -> tuple[str, int]:
    """The extraction text of one A/B answer and the character offset of its letter.

    `answer` is `(A)`-style (anything after the closing bracket is kept): the A/B context ends with `(`, the
    rest of the answer follows, so the letter sits exactly where the A/B task scores it.
    """
    answer = answer.strip()
    if not answer.startswith(ANSWER_OPENER):
        raise ValueError(f"answer {answer!r} does not start with {ANSWER_OPENER!r}")
    context = prompt_for(tokenizer, question, system_prompt, ANSWER_OPENER)
    return context + answer[len(ANSWER_OPENER) :], len(context)


def prompt_ids(tokenizer: Any, text: str, chat_template: bool = True, system_prompt: str | None = None) -> list[int]:
    """Token ids of `text` as a user turn (chat template + generation prompt) or as given.

    Args:
        tokenizer: an HF tokenizer.
        text: the user's text.
        chat_template: True = `prompt_for` (the prompt rule extraction and the tasks use; CAA's base-model
            format when the tokenizer has no template); False = the text with the tokenizer's default
            special tokens.
        system_prompt: a system message before the user turn (chat template only; None or "" = none).
    """
    if not text:
        raise CAAEvalError("the prompt is empty; pass --prompt TEXT or --question TEXT")
    if not chat_template:
        return list(tokenizer(text)["input_ids"])
    rendered = prompt_for(tokenizer, text, system_prompt or None, answer_prefix=None)
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and rendered.startswith(bos))  # as lm-eval's HFLM: the template may write BOS itself
    return list(tokenizer(rendered, add_special_tokens=add_special)["input_ids"])
