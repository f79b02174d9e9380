"""Helpers shared by the task tests: run lm-eval on an in-memory model, and an independent reference."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from caa_eval.paths import tasks_dir


def evaluate(
    model: Any,
    tok: Any,
    tasks: list[str],
    *,
    chat: bool = True,
    batch_size: int = 4,
    metadata: dict | None = None,
    **kwargs: Any,
) -> dict:
    """lm_eval.simple_evaluate with HFLM around a loaded model, only our task folder indexed (fast)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    tm = TaskManager(include_path=str(tasks_dir()), include_defaults=False, metadata=metadata)
    return lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=tm, apply_chat_template=chat, log_samples=True, **kwargs
    )


def chat_prompt(tok: Any, question: str, prefix: str | None = "(") -> str:
    """The CAA prompt built directly with the tokenizer's chat template: user = question, assistant = '('."""
    messages = [{"role": "user", "content": question.strip()}]
    if prefix is None:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    messages.append({"role": "assistant", "content": prefix})
    return tok.apply_chat_template(messages, tokenize=False, continue_final_message=True)


def letter_probs(model: Any, tok: Any, text: str) -> tuple[float, float]:
    """(p(A), p(B)) from a plain forward pass: full-vocabulary softmax at the last position."""
    import torch

    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1].double(), dim=-1)
    return probs[tok.convert_tokens_to_ids("A")].item(), probs[tok.convert_tokens_to_ids("B")].item()


@cache
def raw_items(path: Path) -> list[dict]:
    """A CAA file read with plain json (not through caa_eval), for independent checks."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def context_of(sample: dict, k: int = 0) -> str:
    """The k-th request's context string of a logged sample."""
    args = sample["arguments"]
    first = args[k] if isinstance(args, list) else list(args.values())[k]
    return first[0] if isinstance(first, (list, tuple)) else first["arg_0"]
