"""What a judge backend is: it takes jobs and reports one verdict per job as soon as it has it.

Reporting per job (not per run) is what lets the pipeline commit each paid verdict to the cache before
anything else can fail. The two backends live in openai_backend.py and hf_backend.py; factory.py picks one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from caa_eval.judge.cache import Verdict
from caa_eval.judge.rubrics import Rubric

__all__ = ["BACKENDS", "Job", "Done", "Backend", "model_identity"]

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


def model_identity(backend: Backend) -> str:
    """Cache identity of the judge: local model folders by absolute path, other names as given.

    Args:
        backend: the backend in use.
    """
    path = Path(backend.model).expanduser()
    return str(path.resolve()) if backend.name == "hf" and path.exists() else backend.model
