"""Which token positions get the vector, decided from the tokens of each prompt.

`after_instruction` is CAA's rule: every position from the **last token of the chat-templated prompt**
(the template output with its generation prompt) onward, generated tokens included. On Llama-2-chat that
token is the `]` of the last `[/INST]` (CAA's `find_instruction_end_postion`), on ChatML the `\\n` after
`assistant`. One rule for every template, found by rendering the model's own template around a sentinel.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from caa_eval.errors import CAAEvalError
from caa_eval.vocab import POSITION_MODES

__all__ = ["Positions", "InstructionLocator", "ChatStructureError", "regex_token_positions"]

_SENTINEL = "\ue000caa-eval-sentinel\ue000"


class ChatStructureError(CAAEvalError):
    """The prompt has no chat structure, so 'after the instruction' is undefined."""


@dataclass(frozen=True)
class Positions:
    """Which token positions get the vector.

    after_instruction: from the last token of the chat-templated prompt on (CAA), incl. generated tokens;
    all: every real token; generated: tokens after the prompt (for scoring: the continuation);
    span: offsets [start, end) relative to that first steered token (end None = open); regex: prompt tokens
    that overlap a match of `pattern` in the prompt text.
    """

    mode: str = "after_instruction"
    start: int = 0
    end: int | None = None
    pattern: str | None = None

    @classmethod
    def parse(cls, spec: str | Positions) -> Positions:
        if isinstance(spec, Positions):
            return spec
        spec = str(spec).strip()
        head, _, rest = spec.partition(":")
        if head in ("after_instruction", "all", "generated") and not rest:
            return cls(head)
        if head == "span":
            parts = rest.split(":")
            try:
                start = int(parts[0]) if parts[0] else 0
                end = int(parts[1]) if len(parts) > 1 and parts[1] else None
            except ValueError:
                raise CAAEvalError(
                    f"positions={spec!r}: span offsets must be integers, e.g. span:0:4 or span:-3:"
                ) from None
            if len(parts) > 2 or (end is not None and end <= start):
                raise CAAEvalError(f"positions={spec!r}: use span:START:END with END > START (END may be empty)")
            return cls("span", start, end)
        if head == "regex" and rest:
            try:
                re.compile(rest)
            except re.error as exc:
                raise CAAEvalError(f"positions={spec!r}: invalid regex ({exc})") from None
            return cls("regex", pattern=rest)
        raise CAAEvalError(
            f"positions={spec!r} not understood; use one of {', '.join(POSITION_MODES)} (span:START:END, regex:PATTERN)"
        )

    def __str__(self) -> str:
        if self.mode == "span":
            return f"span:{self.start}:{'' if self.end is None else self.end}"
        if self.mode == "regex":
            return f"regex:{self.pattern}"
        return self.mode

    @property
    def needs_chat_structure(self) -> bool:
        return self.mode in ("after_instruction", "span")


class InstructionLocator:
    """Finds the last token of the chat-templated prompt in a token sequence.

    The template is rendered around a sentinel user message with the generation prompt; what follows the
    sentinel (` [/INST]` on Llama-2, `<|im_end|>\\n<|im_start|>assistant\\n` on ChatML) is the prompt's tail.
    Its tokens are searched from the end of the sequence without their edge tokens (which BPE may merge
    with neighbours, e.g. Llama-2's `](`); the token right after that core is the tail's last token.
    """

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise ChatStructureError(
                "the tokenizer has no chat template, so positions=after_instruction is undefined; "
                "use a chat model or positions=all"
            )
        messages = [{"role": "user", "content": _SENTINEL}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        tail = rendered.split(_SENTINEL)[-1]
        if not tail.strip():
            raise ChatStructureError(
                "the chat template writes nothing after the user turn, so the instruction end "
                "is undefined; use positions=all"
            )
        self.tail_text = tail
        cores: set[tuple[int, ...]] = set()
        for text in {tail, tail.lstrip(), " " + tail.lstrip()}:
            ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(ids) >= 3:
                cores.add(ids[1:-1])  # both edges may merge with their neighbours
            if len(ids) >= 2:
                cores.add(ids[:-1])
        self._single: tuple[int, ...] | None = None
        if not cores:  # a one-token tail (rare): match the token itself
            self._single = tuple(tokenizer(tail, add_special_tokens=False)["input_ids"])
        self.cores = sorted(cores, key=len, reverse=True)

    def instruction_end(self, ids: Sequence[int]) -> int:
        """Index of the first steered token (the last token of the templated prompt); raises if absent."""
        ids = list(ids)
        if self._single:
            for i in range(len(ids) - 1, -1, -1):
                if ids[i] == self._single[0]:
                    return i
        best = -1
        for core in self.cores:
            m = len(core)
            for i in range(len(ids) - m - 1, -1, -1):  # the tail's last token must follow the core
                if ids[i] == core[0] and tuple(ids[i : i + m]) == core:
                    best = max(best, i + m)
                    break
        if best < 0:
            raise ChatStructureError(
                f"no chat turn marker {self.tail_text.strip()!r} in the prompt, so positions=after_instruction is "
                "undefined; run lm_eval with --apply_chat_template, or use positions=all"
            )
        return best


def regex_token_positions(tokenizer: Any, ids: Sequence[int], pattern: str) -> list[int]:
    """Token indices whose decoded text overlaps a regex match over the decoded prompt."""
    ids = list(ids)
    ends, text = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=False)
        ends.append(len(text))
    starts = [0, *ends[:-1]]
    spans = [m.span() for m in re.finditer(pattern, text) if m.end() > m.start()]
    return [i for i, (s, e) in enumerate(zip(starts, ends)) if e > s and any(a < e and s < b for a, b in spans)]
