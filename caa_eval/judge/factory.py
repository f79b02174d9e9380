"""A judge backend by name (`openai` or `hf`): the one place that knows both backends."""

from __future__ import annotations

from caa_eval.errors import CAAEvalError
from caa_eval.judge.backends import BACKENDS, Backend

__all__ = ["make_backend"]

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
