"""Per-item scores of one lm-eval task at a given multiplier: the measurement `caa_eval.analysis.elicit` searches.

The task is built once; each call sets the steering in place (`SteeredHFLM.set_steering`), runs lm-eval's own
`evaluate` with the chat template and logged samples, and returns the per-item metric in doc order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from caa_eval.errors import CAAEvalError
from caa_eval.lmeval.run import default_task_manager
from caa_eval.vocab import primary_metric

__all__ = ["lmeval_scorer"]


def _task_dict(task: str, manager: Any) -> dict[str, Any]:
    from lm_eval.tasks import get_task_dict

    try:
        return get_task_dict([task], manager)
    except (KeyError, ValueError) as exc:
        raise CAAEvalError(
            f"lm-eval cannot build task {task!r} ({exc}); check the name with `caa-eval tasks`"
        ) from None


def lmeval_scorer(
    lm: Any,
    task: str,
    vector: Any,
    layer: int,
    metric: str | None = None,
    limit: int | None = None,
    site: str | None = None,
    positions: str = "after_instruction",
    task_manager: Any = None,
    allow_fingerprint_mismatch: bool = False,
) -> Callable[[float], np.ndarray]:
    """A scorer (multiplier -> per-item scores) running an lm-eval task through a loaded `steered-hf` model.

    Args:
        lm: a `caa_eval.lmeval.model.SteeredHFLM`.
        task: lm-eval task name (e.g. `caa_ab_sycophancy`).
        vector: vector file path or loaded `SteeringVector`.
        layer: the steered block.
        metric: per-item metric (default: the task family's primary metric, p_match for caa_ab).
        limit: use only the first `limit` items.
        site, positions: where and at which tokens to add the vector.
        task_manager: an lm-eval TaskManager (default: `default_task_manager()`, built once per process).
        allow_fingerprint_mismatch: apply a vector extracted from another model (base -> chat).
    """
    from lm_eval.evaluator import evaluate

    metric = metric or primary_metric(task)
    if not metric:
        raise CAAEvalError(f"task {task!r} has no known primary metric; name the per-item metric with --metric")
    task_dict = _task_dict(task, task_manager or default_task_manager())
    steering: dict[str, Any] = {"layers": [layer], "site": site, "positions": positions}
    steering["allow_fingerprint_mismatch"] = allow_fingerprint_mismatch

    def score(multiplier: float) -> np.ndarray:
        if multiplier == 0:
            lm.set_steering(vector=None, multiplier=0)
        else:
            lm.set_steering(vector=vector, multiplier=multiplier, **steering)
        results = evaluate(
            lm=lm,
            task_dict=task_dict,
            limit=limit,
            log_samples=True,
            apply_chat_template=True,
            bootstrap_iters=0,
            verbosity="WARNING",
        )
        samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
        if samples and metric not in samples[0]:
            raise CAAEvalError(f"task {task!r} logs no per-item {metric!r}; name one of its metrics with --metric")
        return np.array([float(s[metric]) for s in samples])

    return score
