"""Fluency of open-ended answers without a judge: what steering does to the text itself.

Per generation: `perplexity` = exp(−mean log p(token)) of the generated text under the *unsteered* model
(teacher-forced: the context's tokens as generation saw them, then the text tokenised on its own), `distinct_1` / `distinct_2` = unique word uni-/bigrams over all of
them, `repetition_4gram` = share of word 4-grams that repeat an earlier one (1 − distinct-4). Words are the
lower-cased whitespace-separated tokens. A text too short for an n-gram gives NaN for that metric, which the
task means leave out (`nanmean`).

steered-hf scores its own generations right after `generate_until` (same process, same loaded model, steering
off, batched by lm-eval's loglikelihood path) and leaves the numbers here; the open-ended tasks' process_results
(`caa_eval.lmeval.tasks.CAATask`) picks them up. Other models leave nothing: perplexity is then NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "FLUENCY_METRICS",
    "words",
    "distinct_n",
    "repetition_rate",
    "text_metrics",
    "nanmean",
    "doc_key",
    "want",
    "wanted",
    "record",
    "take",
    "clear",
    "unsteered_perplexities",
]

FLUENCY_METRICS = ("perplexity", "distinct_1", "distinct_2", "repetition_4gram")
"""The per-sample fluency metrics of the open-ended tasks (lower is better for perplexity and repetition)."""

_SCORES: dict[tuple[str, str, str], float] = {}  # (task, doc key, generation) -> unsteered perplexity
_WANTED: set[str] = set()  # tasks whose metrics include perplexity (only their generations are scored)


def words(text: str) -> list[str]:
    """The word tokens distinct-n and repetition count: lower-cased, split on whitespace."""
    return text.lower().split()


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(text: str, n: int) -> float:
    """Unique n-grams / all n-grams of the text's words (NaN when it has no n-gram).

    Args:
        text: a generation.
        n: n-gram length.
    """
    grams = _ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else math.nan


def repetition_rate(text: str, n: int = 4) -> float:
    """Share of the text's word n-grams that repeat an earlier one: 1 − distinct-n (NaN without an n-gram).

    Args:
        text: a generation.
        n: n-gram length (4 for `repetition_4gram`).
    """
    value = distinct_n(text, n)
    return 1.0 - value if not math.isnan(value) else math.nan


def text_metrics(text: str) -> dict[str, float]:
    """distinct_1, distinct_2 and repetition_4gram of one generation."""
    return {
        "distinct_1": distinct_n(text, 1),
        "distinct_2": distinct_n(text, 2),
        "repetition_4gram": repetition_rate(text),
    }


def nanmean(values: Sequence[float]) -> float:
    """lm-eval aggregation of the fluency metrics: the mean over the samples that have a value."""
    kept = [float(v) for v in values if not math.isnan(float(v))]
    return sum(kept) / len(kept) if kept else math.nan


def doc_key(doc: dict[str, Any]) -> str:
    """What identifies a doc for the hand-over from the model to process_results (its user turn)."""
    return str(doc.get("user_prompt", doc.get("question", "")))


def want(task: str) -> None:
    """Mark a task as reporting fluency: steered-hf scores only these tasks' generations (the pass costs time).

    Args:
        task: the lm-eval task name.
    """
    _WANTED.add(task)


def wanted() -> frozenset[str]:
    """The tasks that asked for fluency metrics in this process."""
    return frozenset(_WANTED)


def record(task: str, doc: dict[str, Any], generation: str, perplexity: float) -> None:
    """Leave one generation's unsteered perplexity for its task's process_results.

    Args:
        task: the lm-eval task name of the request.
        doc: the request's doc.
        generation: the generated text, as returned to lm-eval.
        perplexity: exp(−mean token log-likelihood) under the unsteered model.
    """
    _SCORES[(task, doc_key(doc), generation)] = perplexity


def take(task: str, doc: dict[str, Any], generation: str) -> float:
    """The recorded perplexity of a generation (removed from the store), NaN when none was recorded.

    Args:
        task: the lm-eval task name.
        doc: the doc process_results receives.
        generation: the generated text.
    """
    return _SCORES.pop((task, doc_key(doc), generation), math.nan)


def clear() -> None:
    """Forget what an earlier run left (steered-hf calls it before each batch of generations)."""
    _SCORES.clear()


def unsteered_perplexities(lm: Any, contexts: Sequence[str], generations: Sequence[str]) -> list[float]:
    """exp(−mean log p) of each generation after its context under `lm` with steering off, in one batched
    lm-eval loglikelihood pass.

    Args:
        lm: a loaded `SteeredHFLM` (its steering is switched off for the pass and restored).
        contexts: the rendered prompts the generations continued.
        generations: the generated texts.
    """
    from lm_eval.models.huggingface import HFLM

    pairs = [(c, g) for c, g in zip(contexts, generations)]
    # the context's tokens as generation saw them, the generation tokenised on its own after them (lm-eval's
    # _encode_pair would move the context's trailing newline into the scored part)
    encoded = [(lm.tok_encode(c), lm.tok_encode(g, add_special_tokens=False)) if g else ([], []) for c, g in pairs]
    todo = [i for i, (_, cont) in enumerate(encoded) if cont]
    out = [math.nan] * len(pairs)
    if not todo:
        return out
    requests = [(pairs[i], encoded[i][0], encoded[i][1]) for i in todo]
    saved = lm._steering
    lm._steering = None  # the plain model: no hooks, no grid
    try:
        scores = HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True)
    finally:
        lm._steering = saved
    for i, (logprob, _) in zip(todo, scores):
        out[i] = math.exp(-logprob / len(encoded[i][1]))
    return out
