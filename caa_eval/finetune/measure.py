"""Did the finetune take? p(match) of a model on A/B pairs, scored exactly as the `caa_ab_*` tasks score it.

The context is the A/B task's context (`prompt_for`: chat template, assistant turn opened by `(`), the
continuations are the letters `A` and `B`, tokenised as lm-eval's `HFLM._encode_pair` does (context and
context + letter encoded separately, the letter is the tail), and p(match) is the task's `ab_scores`. So
the numbers equal `lm_eval --model steered-hf --model_args ...,peft=DIR` on the same items. Items are
scored in a few large batches (left-padded, real positions kept), one forward per batch, logits of the
last position only.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from caa_eval import data
from caa_eval.core.ab_score import ab_scores
from caa_eval.core.prompts import prompt_for
from caa_eval.core.read_rows import add_special_tokens_for
from caa_eval.errors import CAAEvalError

__all__ = [
    "SCORE_BATCH",
    "MIN_SHIFT",
    "ScoringSet",
    "scoring_set",
    "p_match",
    "shift_toward",
    "p_match_line",
    "target_line",
    "shift_warning",
]

SCORE_BATCH = 64
"""Items per scoring forward: a held-out slice of up to 64 items is one forward."""


@dataclass(frozen=True)
class ScoringSet:
    """Tokenised A/B contexts, the token of each letter after them, and each item's matching letter."""

    contexts: list[list[int]]
    letters: list[tuple[int, int]]  # (token of A, token of B) after each context
    matching: list[str]

    def __len__(self) -> int:
        return len(self.contexts)


def _letter_token(tokenizer: Any, context: str, ctx: list[int], letter: str) -> int:
    whole = tokenizer(context + letter, add_special_tokens=add_special_tokens_for(tokenizer, context))["input_ids"]
    if whole[: len(ctx)] != ctx or len(whole) != len(ctx) + 1:
        raise CAAEvalError(
            f"the tokenizer does not give the letter {letter!r} one token of its own after the A/B context; "
            "the A/B format cannot score this model"
        )
    return int(whole[-1])


def scoring_set(tokenizer: Any, pairs: Sequence[data.ContrastPair], system_prompt: str | None = None) -> ScoringSet:
    """Tokenise pairs for `p_match`.

    Args:
        tokenizer: the model's HF tokenizer.
        pairs: A/B contrast pairs (answers `(A)` / `(B)`).
        system_prompt: optional system message, as the A/B task would place it.
    """
    contexts, letters = [], []
    for pair in pairs:
        context = prompt_for(tokenizer, pair.question, system_prompt)
        ctx = list(tokenizer(context, add_special_tokens=add_special_tokens_for(tokenizer, context))["input_ids"])
        contexts.append(ctx)
        letters.append((_letter_token(tokenizer, context, ctx, "A"), _letter_token(tokenizer, context, ctx, "B")))
    return ScoringSet(contexts, letters, [p.matching_letter for p in pairs])


def _last_logprobs(model: torch.nn.Module, rows: list[list[int]], pad_id: int) -> torch.Tensor:
    """Log-probabilities of the next token after each row (one forward, left padding, true positions)."""
    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        ids[k, width - len(row) :] = torch.tensor(row)
        mask[k, width - len(row) :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    kwargs["position_ids"] = positions.to(device)
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    if "logits_to_keep" in inspect.signature(base.forward).parameters:
        kwargs["logits_to_keep"] = 1
    logits = model(**kwargs).logits[:, -1, :]
    return torch.log_softmax(logits.float(), dim=-1)


def p_match(model: torch.nn.Module, scoring: ScoringSet, pad_id: int, batch: int = SCORE_BATCH) -> float:
    """Mean p(matching letter) / (p(A) + p(B)) over the items (the `caa_ab_*` task's p_match).

    Args:
        model: a causal LM, peft-wrapped or not (scored in eval mode, without gradients; its mode is restored).
        scoring: from `scoring_set`.
        pad_id: the tokenizer's pad (or eos) id; padded positions are masked.
        batch: items per forward.
    """
    if not len(scoring):
        raise CAAEvalError("no items to score")
    training = model.training
    model.eval()
    order = sorted(range(len(scoring)), key=lambda i: len(scoring.contexts[i]))  # similar lengths: little padding
    scores = []
    with torch.no_grad():
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            logprobs = _last_logprobs(model, [scoring.contexts[i] for i in chunk], pad_id)
            for i, row in zip(chunk, logprobs):
                a, b = scoring.letters[i]
                scores.append(ab_scores(float(row[a]), float(row[b]), scoring.matching[i])["p_match"])
    model.train(training)
    return float(sum(scores) / len(scores))


def shift_toward(direction: str, before: float, after: float) -> float:
    """How far p(match) moved in the taught direction (pos: up, neg: down); negative when it moved back."""
    return after - before if direction == "pos" else before - after


MIN_SHIFT = 0.05
"""A held-out shift below this (in the taught direction) means the finetune barely changed the model."""


def p_match_line(info: dict[str, Any]) -> str:
    """`p(match) train 0.495 → 0.812, held-out 0.502 → 0.744 (pos)` from a finetune record.

    Args:
        info: `caa_finetune.json` (or `finetune_to_dir`'s return value).
    """
    b, a = info["p_match_before"], info["p_match_after"]
    return (
        f"p(match) train {b['train']:.3f} → {a['train']:.3f}, held-out {b['heldout']:.3f} → {a['heldout']:.3f} "
        f"({info['direction']})"
    )


def target_line(info: dict[str, Any]) -> str | None:
    """Whether `--target-shift` was reached, and at which step (None without a target)."""
    target = info["hyperparameters"].get("target_shift")
    if target is None:
        return None
    if info.get("target_reached"):
        return f"target held-out shift {target:+g} reached at step {info['steps']}: stopped early"
    return f"target held-out shift {target:+g} not reached in {info['steps']} steps"


def shift_warning(info: dict[str, Any]) -> str | None:
    """One line naming what to change when the held-out shift in the taught direction is below `MIN_SHIFT`,
    or short of a `--target-shift` that was not reached (None when the finetune took).

    Args:
        info: a finetune record with `heldout_shift`.
    """
    shift, direction = info["heldout_shift"], info["direction"]
    target = info["hyperparameters"].get("target_shift")
    if target is not None and not info.get("target_reached"):
        return (
            f"held-out p(match) moved {shift:+.3f} toward {direction}, short of --target-shift {target:g} in "
            f"{info['steps']} steps; use more pairs, a higher --max-steps or --lr, or a smaller --target-shift"
        )
    if shift >= MIN_SHIFT:
        return None
    return (
        f"held-out p(match) moved only {shift:+.3f} toward {direction} (< {MIN_SHIFT}): the adapter barely "
        "changed the model; use more pairs, more --epochs, a higher --lr, or --target-shift 0.1 (up to --max-steps)"
    )
