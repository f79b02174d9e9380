"""The `openai` judge: any OpenAI-compatible chat server (OpenAI, vLLM, llama.cpp, Ollama) via the official client.

Transport retries and backoff are the client's own; this module adds one retry for an unparseable reply,
turns server failures into `missing` verdicts with a reason, and stops the run on errors that would fail
every item (bad key, wrong model or URL, server down). Nothing the server sends can crash the run between
a paid reply and its verdict reaching the cache.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from caa_eval.errors import CAAEvalError
from caa_eval.judge.backends import Done, Job
from caa_eval.judge.cache import Verdict
from caa_eval.judge.prompt import MAX_REPLY_TOKENS, RETRY_PROMPT, build_messages, parse_score
from caa_eval.judge.redact import redact

__all__ = ["DEFAULT_OPENAI_MODEL", "OpenAIBackend", "read_completion"]

log = logging.getLogger(__name__)

DEFAULT_OPENAI_MODEL = "gpt-4"
_REPLY_CHARS = 200  # stored judge replies are cut here


def _count(value: Any) -> int | None:
    """A token count as the server sent it, or None when it is absent or not a whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def read_completion(response: Any) -> tuple[str | None, int | None, int | None] | None:
    """(reply text, prompt tokens, completion tokens) of a chat completion; None if it is not one.

    Never raises: servers behind proxies answer with HTML pages or error bodies, which the client returns
    as a plain string or a half-built object.

    Args:
        response: what `client.chat.completions.create` returned.
    """
    try:
        choices = None if isinstance(response, (str, bytes)) else getattr(response, "choices", None)
        if not isinstance(choices, list):
            return None
        message = getattr(choices[0], "message", None) if choices else None
        text = getattr(message, "content", None)
        usage = getattr(response, "usage", None)
        return (
            text if isinstance(text, str) else None,
            _count(getattr(usage, "prompt_tokens", None)),
            _count(getattr(usage, "completion_tokens", None)),
        )
    except Exception:  # noqa: BLE001 - a malformed object from the server is a failed item, never a crash
        return None


def _snippet(response: Any) -> str:
    text = response.decode(errors="replace") if isinstance(response, bytes) else response
    if not isinstance(text, str):
        return type(response).__name__
    return repr(" ".join(text.split())[:80])


class OpenAIBackend:
    """Any OpenAI-compatible chat server; transport retries/backoff are the official client's own."""

    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
    ):
        """Configure the backend; nothing is contacted before run().

        Args:
            model: the judge model (default gpt-4).
            base_url: server URL (default $OPENAI_BASE_URL, else OpenAI).
            api_key: key (default $OPENAI_API_KEY; checked only when a call is needed).
            concurrency: requests in flight.
            timeout: seconds per request before the client retries.
            max_retries: the client's retries on 429/5xx/408/409/timeouts.
        """
        self.model = model or DEFAULT_OPENAI_MODEL
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.secret = api_key or os.environ.get("OPENAI_API_KEY")  # checked in run(): a cached rerun needs none
        if concurrency < 1:
            raise CAAEvalError(f"--concurrency must be at least 1, got {concurrency}")
        if timeout <= 0 or max_retries < 0:
            raise CAAEvalError(f"--timeout must be > 0 and --max-retries >= 0, got {timeout} and {max_retries}")
        self.concurrency, self.timeout, self.max_retries = concurrency, timeout, max_retries
        self.http_requests = 0  # every HTTP attempt, including the client's own retries

    def _where(self) -> str:
        return self.base_url or "the OpenAI API"

    async def run(self, jobs: Sequence[Job], done: Done) -> None:
        """Judge all jobs concurrently, calling `done` once per job as its verdict arrives."""
        import openai

        if not self.secret:
            raise CAAEvalError(
                "OPENAI_API_KEY is not set; export your key (a local vLLM/llama.cpp/Ollama server usually accepts "
                "any dummy value, e.g. OPENAI_API_KEY=local) or use --backend hf for an offline local judge"
            )

        async def count_request(_request: object) -> None:
            self.http_requests += 1

        client = openai.AsyncOpenAI(
            api_key=self.secret,
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=self.max_retries,
            http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [count_request]}),
        )
        semaphore = asyncio.Semaphore(self.concurrency)
        async with client:
            tasks = [asyncio.ensure_future(self._judge(client, semaphore, job, done)) for job in jobs]
            try:
                await asyncio.gather(*tasks)
            finally:  # on a fatal error stop the other requests instead of letting them run on
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def _missing(self, verdict: Verdict, error: str) -> None:
        verdict.status, verdict.error = "missing", redact(error, self.secret)
        log.debug("judge item counted as missing: %s", verdict.error)  # the run summary names the first error

    async def _judge(self, client: Any, semaphore: asyncio.Semaphore, job: Job, done: Done) -> None:
        import openai

        messages = build_messages(job.rubric, job.question, job.answer)
        verdict = Verdict(score=None, status="invalid")
        for _attempt in range(2):  # one retry for an invalid reply, with a reminder of the format
            async with semaphore:
                try:
                    response = await client.chat.completions.create(
                        model=self.model, messages=messages, temperature=0, max_tokens=MAX_REPLY_TOKENS
                    )
                except openai.APITimeoutError:
                    self._missing(verdict, f"request timed out ({self.timeout:g} s, {self.max_retries} retries)")
                    break
                except openai.APIConnectionError as exc:
                    raise CAAEvalError(
                        f"cannot reach the judge server at {self._where()} ({redact(str(exc), self.secret)}); "
                        "check --judge-base-url / OPENAI_BASE_URL (finished scores are cached, rerun to resume)"
                    ) from None
                except openai.APIStatusError as exc:
                    if exc.status_code in (429, 408, 409) or exc.status_code >= 500:
                        self._missing(
                            verdict, f"HTTP {exc.status_code} after {self.max_retries} retries ({self._detail(exc)})"
                        )
                        break
                    raise CAAEvalError(self._status_message(exc)) from None
                except (openai.APIResponseValidationError, ValueError) as exc:  # e.g. a JSON content type, no JSON
                    self._missing(verdict, f"unreadable response from {self._where()} ({type(exc).__name__})")
                    break
            completion = read_completion(response)
            if completion is None:  # an HTML page or an error body with HTTP 200: no verdict, ask again on rerun
                self._missing(
                    verdict,
                    f"the server at {self._where()} answered with something that is not a chat "
                    f"completion: {_snippet(response)}",
                )
                break
            text, prompt_tokens, completion_tokens = completion
            verdict.calls += 1
            if prompt_tokens is None or completion_tokens is None:
                verdict.usage_unknown = True
            verdict.prompt_tokens += prompt_tokens or 0
            verdict.completion_tokens += completion_tokens or 0
            verdict.reply = redact(text, self.secret)
            score = parse_score(text)
            if score is not None:
                verdict.score, verdict.status = score, "ok"
                break
            verdict.invalid_replies += 1
            messages = [
                *messages,
                {"role": "assistant", "content": text or ""},
                {"role": "user", "content": RETRY_PROMPT},
            ]
        if verdict.reply is not None:
            verdict.reply = verdict.reply[:_REPLY_CHARS]
        done(job, verdict)

    def _detail(self, exc: Any) -> str:
        detail = redact(str(getattr(exc, "message", exc)), self.secret)
        return " ".join(detail.split())[:200] if detail else ""

    def _status_message(self, exc: Any) -> str:
        code = exc.status_code
        detail = self._detail(exc)
        if code == 401:
            return (
                f"the judge server at {self._where()} rejected the API key (HTTP 401); set OPENAI_API_KEY to a "
                "valid key (a local server may want the dummy value it was started with)"
            )
        if code == 403:
            return (
                f"the judge server at {self._where()} refused access (HTTP 403: {detail}); check the key's permissions"
            )
        if code == 404:
            return (
                f"judge model {self.model!r} or its chat endpoint was not found at {self._where()} (HTTP 404); "
                "check --judge-model and --judge-base-url (it usually ends in /v1)"
            )
        return (
            f"the judge server at {self._where()} rejected the request (HTTP {code}: {detail}); check that "
            f"--judge-model {self.model!r} serves chat completions with temperature and max_tokens"
        )
