"""What a judge backend is: it takes jobs and reports one verdict per job as soon as it has it.

Reporting per job (not per run) is what lets the pipeline commit each paid verdict to the cache before
anything else can fail. The two backends live in openai_backend.py and hf_backend.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from caa_eval.errors import CAAEvalError
from caa_eval.judge.cache import Verdict
from caa_eval.judge.rubrics import Rubric

__all__ = ["BACKENDS", "Job", "Done", "Backend", "make_backend", "model_identity"]

BACKENDS = ("openai", "hf")


@dataclass(frozen=True)
class Job:
    """One (rubric, question, answer) to score, under its cache key."""

    key: str
    rubric: Rubric
    question: str
    answer: str


Done = Callable[[Job, Verdict], None]


class Backend(Protocol):
    name: str
    model: str  # identity used in cache keys and outputs
    secret: str | None

    async def run(self, jobs: Sequence[Job], done: Done) -> None: ...


_HF_BACKENDS: dict[tuple[str | None, int], Backend] = {}


def make_backend(
    backend: str,
    judge_model: str | None = None,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    concurrency: int = 8,
    timeout: float = 60.0,
    max_retries: int = 5,
    batch_size: int = 8,
) -> Backend:
    """A judge backend by name; nothing is loaded or contacted until it runs.

    Args:
        backend: `openai` (any OpenAI-compatible server) or `hf` (a local HF chat model).
        judge_model: the judge model (default gpt-4 / the embedded SmolLM2).
        base_url: openai: server URL (default $OPENAI_BASE_URL).
        api_key: openai: key (default $OPENAI_API_KEY).
        concurrency: openai: requests in flight.
        timeout: openai: seconds per request.
        max_retries: openai: the client's retries on 429/5xx/timeouts.
        batch_size: hf: prompts per forward pass.
    """
    if backend == "openai":
        from caa_eval.judge.openai_backend import OpenAIBackend

        return OpenAIBackend(
            judge_model,
            base_url=base_url,
            api_key=api_key,
            concurrency=concurrency,
            timeout=timeout,
            max_retries=max_retries,
        )
    if backend == "hf":
        from caa_eval.judge.hf_backend import HFBackend

        # one local judge per process: a sweep judges many cells, and the model should load once
        key = (judge_model, batch_size)
        if key not in _HF_BACKENDS:
            _HF_BACKENDS[key] = HFBackend(judge_model, batch_size=batch_size)
        return _HF_BACKENDS[key]
    raise CAAEvalError(f"unknown judge backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def model_identity(backend: Backend) -> str:
    """Cache identity of the judge: local model folders by absolute path, other names as given.

    Args:
        backend: the backend in use.
    """
    path = Path(backend.model).expanduser()
    return str(path.resolve()) if backend.name == "hf" and path.exists() else backend.model
