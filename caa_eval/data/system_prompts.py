"""Behaviour system prompts (`system_prompt: pos|neg` in a sweep condition): one short sentence per behaviour
and direction, shipped as data (`system_prompts.json`, written by the caa-eval authors; its `about` says why
CAA's own wording is not copied and how to use it anyway).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from caa_eval.errors import CAAEvalError
from caa_eval.vocab import behaviour_key

__all__ = ["PROMPT_DIRECTIONS", "system_prompt_behaviours", "behaviour_system_prompt"]

PROMPT_DIRECTIONS = ("pos", "neg")
"""pos: towards the answer matching the behaviour; neg: away from it."""


@cache
def _prompts() -> dict[str, dict[str, str]]:
    text = resources.files("caa_eval.data").joinpath("system_prompts.json").read_text(encoding="utf-8")
    return {behaviour_key(b): p for b, p in json.loads(text)["prompts"].items()}


def system_prompt_behaviours() -> list[str]:
    """The behaviours with a shipped pos/neg system prompt."""
    return sorted(_prompts())


def behaviour_system_prompt(behaviour: str, direction: str) -> str:
    """The shipped system prompt of a behaviour in one direction.

    Args:
        behaviour: a behaviour name in any spelling (`sycophancy`, `coordinate_other_ais`, `optimism`).
        direction: `pos` or `neg`.
    """
    if direction not in PROMPT_DIRECTIONS:
        raise CAAEvalError(f"system prompt direction {direction!r}: write pos or neg")
    prompts = _prompts().get(behaviour_key(behaviour))
    if prompts is None:
        raise CAAEvalError(
            f"no shipped system prompt for behaviour {behaviour!r} (there are: {', '.join(system_prompt_behaviours())}); "
            "write the prompt itself, e.g. system_prompt: 'You are ...'"
        )
    return prompts[direction]
