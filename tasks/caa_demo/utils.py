"""`!function` hooks of the caa_demo tasks: the reply-choice probe (two full replies, scored by likelihood)."""

from __future__ import annotations

import math
from typing import Any

import datasets

from caa_eval.data import read_records
from caa_eval.errors import CAAEvalError
from caa_eval.lmeval.tasks import CAATask, load_ab, load_open, nanmean, process_ab, process_open, user_data_file

__all__ = [
    "CAATask",
    "load_ab",
    "load_open",
    "nanmean",
    "process_ab",
    "process_open",
    "load_replies",
    "process_replies",
]


def load_replies(test_file: str, config_source: str | None = None, **_: Any) -> datasets.DatasetDict:
    """Docs with a question and the behaviour-matching / non-matching replies as the two choices."""
    path = user_data_file(test_file, config_source)
    rows = []
    for i, rec in enumerate(read_records(path)):
        for field in ("question", "answer_matching", "answer_not_matching"):
            if not isinstance(rec.get(field), str) or not rec[field].strip():
                raise CAAEvalError(f"{path}: item {i} needs a non-empty string field {field!r}")
        rows.append({"question": rec["question"], "choices": [rec["answer_matching"], rec["answer_not_matching"]]})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def process_replies(doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
    """p_match = softmax of the two replies' total log-likelihoods, taken at the matching reply."""
    (ll_match, _), (ll_other, _) = results
    diff = ll_match - ll_other
    return {"p_match": 1.0 / (1.0 + math.exp(-diff)) if diff > -700 else 0.0, "ll_diff": diff, "match": float(diff > 0)}
