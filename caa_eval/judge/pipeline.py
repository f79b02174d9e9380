"""The judge run: samples files in, one cached verdict per answer, `judged_*.jsonl` + summaries out.

Order matters for money and results: everything that can be checked (inputs, rubrics, output folders,
cache file) is checked before the first paid call; each verdict is committed to the cache the moment it
arrives; outputs are written atomically at the end, and a run in which no item got a score writes
nothing (so it cannot replace earlier results with nulls) and fails with the first error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from caa_eval.errors import CAAEvalError
from caa_eval.files import write_atomic
from caa_eval.judge.backends import Job, model_identity
from caa_eval.judge.cache import ScoreCache, Verdict, cache_key, default_cache_path
from caa_eval.judge.factory import make_backend
from caa_eval.judge.redact import redacted_logs
from caa_eval.judge.rubrics import load_rubrics
from caa_eval.judge.samples import Item, ensure_writable, find_samples, output_path, read_items, task_of

__all__ = ["TaskSummary", "Usage", "JudgeSummary", "JudgeFailedError", "judge_samples", "DEFAULT_CACHE"]


@dataclass
class TaskSummary:
    """One samples file's verdicts in numbers."""

    task: str
    behaviour: str
    samples_file: str
    output_file: str | None
    n: int
    scored: int
    mean: float | None
    std: float | None
    invalid: int  # judge replied, but twice without a bare number
    missing: int  # items without a score (invalid + server failures)
    rubric_sha: str


@dataclass
class Usage:
    """What the run cost and how much came from the cache."""

    calls: int = 0  # judge requests answered (openai) / items scored (hf)
    cached: int = 0  # items answered from the cache or deduplicated within the run
    invalid: int = 0  # invalid replies seen, including ones fixed by the retry
    missing: int = 0  # items left without a score
    http_requests: int = 0  # openai: HTTP attempts including the client's retries
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unknown_usage: int = 0  # openai: answered requests whose token counts the server left out or garbled


@dataclass
class JudgeSummary:
    """The whole run: per-task numbers, usage, and the first reason an item got no score."""

    backend: str
    judge_model: str
    tasks: list[TaskSummary]
    usage: Usage
    cache_path: str | None
    elapsed_s: float
    first_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """Per-task table plus the usage line, for the terminal."""
        width = max([len(t.task) for t in self.tasks] + [4])
        lines = [
            f"{'task':<{width}}  {'behaviour':<22} {'n':>5} {'scored':>6} {'mean':>6} {'std':>5} "
            f"{'invalid':>7} {'missing':>7}  rubric"
        ]
        for t in self.tasks:
            mean = f"{t.mean:6.2f}" if t.mean is not None else "     -"
            std = f"{t.std:5.2f}" if t.std is not None else "    -"
            lines.append(
                f"{t.task:<{width}}  {t.behaviour:<22} {t.n:>5} {t.scored:>6} {mean} {std} "
                f"{t.invalid:>7} {t.missing:>7}  {t.rubric_sha}"
            )
        u = self.usage
        unknown = f" (token counts unknown for {u.unknown_usage} calls)" if u.unknown_usage else ""
        lines.append(
            f"judge {self.backend}:{self.judge_model}: {u.calls} calls, {u.cached} cached, "
            f"{u.invalid} invalid replies, "
            f"{u.missing} missing, {u.http_requests} HTTP requests, {u.prompt_tokens} prompt + {u.completion_tokens} "
            f"completion tokens{unknown}, {self.elapsed_s:.1f} s"
        )
        return "\n".join(lines)


class JudgeFailedError(CAAEvalError):
    """No item of the run got a score; `summary` holds the counts. Nothing was written."""

    def __init__(self, message: str, summary: JudgeSummary):
        super().__init__(message)
        self.summary = summary


def _mean_std(scores: list[float]) -> tuple[float | None, float | None]:
    if not scores:
        return None, None
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) if len(scores) > 1 else None
    return round(mean, 4), (round(std, 4) if std is not None else None)


def _why_unscored(v: Verdict) -> str:
    if v.status == "invalid":
        return f"the judge replied {v.reply!r} twice without a bare number from 0 to 10"
    return v.error or "the judge server gave no reply"


def _run_coroutine(coro: Any) -> Any:
    """asyncio.run, also from code that already runs an event loop (notebooks): then in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


DEFAULT_CACHE: Any = object()
"""Sentinel for `cache_path`: the default cache file (None means no disk cache)."""


def judge_samples(
    paths: str | Path | Iterable[str | Path],
    *,
    backend: str = "openai",
    judge_model: str | None = None,
    concurrency: int = 8,
    cache_path: str | Path | None | object = DEFAULT_CACHE,
    rubrics: str | Path | Mapping[str, str] | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    max_retries: int = 5,
    batch_size: int = 8,
    output_dir: str | Path | None = None,
    write: bool = True,
    progress: bool = False,
) -> JudgeSummary:
    """Judge every open-ended answer in lm-eval samples files/folders; write `judged_*.jsonl` beside them.

    Raises CAAEvalError before any judge call for bad input or an unwritable output folder, and
    JudgeFailedError (writing nothing) when no item got a score.

    Args:
        paths: lm-eval output folder(s) (searched recursively) and/or samples files.
        backend: `openai` (any OpenAI-compatible server) or `hf` (a local HF chat model).
        judge_model: default gpt-4 (openai) / the embedded SmolLM2 (hf).
        concurrency: openai: requests in flight.
        cache_path: default `~/.cache/caa-eval/judge/scores.sqlite`; None disables the disk cache.
        rubrics: YAML file or {behaviour: text} overriding or adding rubrics.
        base_url, api_key: openai: server URL and key (default $OPENAI_BASE_URL, $OPENAI_API_KEY).
        timeout, max_retries: openai: seconds per request; the client's retries on 429/5xx/timeouts.
        batch_size: hf: prompts per forward pass.
        output_dir: write outputs here instead of beside the samples.
        write: False = return the summary only.
        progress: show a progress bar on stderr.
    """
    started = time.perf_counter()
    rubric_map = load_rubrics(rubrics)
    per_file, targets = _inputs(paths, rubric_map, output_dir, write)
    settings: dict[str, Any] = {"concurrency": concurrency, "timeout": timeout, "max_retries": max_retries}
    be = make_backend(backend, judge_model, base_url=base_url, api_key=api_key, batch_size=batch_size, **settings)
    resolved_cache = default_cache_path() if cache_path is DEFAULT_CACHE else cache_path
    plan = _Plan(per_file, rubric_map, be, model_identity(be))
    with redacted_logs(be.secret), ScoreCache(resolved_cache) as cache:  # type: ignore[arg-type]
        plan.look_up(cache)
        plan.score(cache, progress)
    summaries, outputs = plan.tabulate(targets)
    result = JudgeSummary(
        backend=be.name,
        judge_model=be.model,
        tasks=summaries,
        usage=plan.usage,
        cache_path=str(resolved_cache) if resolved_cache is not None else None,
        elapsed_s=round(time.perf_counter() - started, 3),
        first_error=plan.first_error,
    )
    _write(result, outputs)
    return result


def _inputs(
    paths: str | Path | Iterable[str | Path], rubric_map: dict[str, Any], output_dir: str | Path | None, write: bool
) -> tuple[dict[Path, list[Item]], dict[Path, Path | None]]:
    """Every samples file's items and where its judged file goes; checked before any judge call."""
    path_list = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files = find_samples(path_list, rubric_map)
    per_file: dict[Path, list[Item]] = {f: read_items(f, rubric_map) for f in files}
    out_dir = Path(output_dir) if output_dir is not None else None
    targets = {f: output_path(f, out_dir) if write else None for f in files}
    for folder in dict.fromkeys(t.parent for t in targets.values() if t is not None):
        ensure_writable(folder)
    return per_file, targets


@dataclass
class _Plan:
    """One judge run: which items need a call (plan), their verdicts (score), the judged rows (tabulate)."""

    per_file: dict[Path, list[Item]]
    rubrics: dict[str, Any]
    be: Any  # the Backend
    identity: str  # the judge's cache identity
    usage: Usage = field(default_factory=Usage)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    keys: dict[tuple[Path, int], str] = field(default_factory=dict)
    first_error: str | None = None

    def look_up(self, cache: ScoreCache) -> None:
        """Every item's cache key; cached and repeated items need no call."""
        for f, items in self.per_file.items():
            for i, item in enumerate(items):
                rubric = self.rubrics[item.behaviour]
                key = cache_key(self.be.name, self.identity, rubric, item.question, item.answer)
                self.keys[f, i] = key
                if key in self.verdicts or key in self.jobs:
                    self.usage.cached += 1
                    continue
                hit = cache.get(key)
                if hit is not None:
                    self.verdicts[key] = hit
                    self.usage.cached += 1
                else:
                    self.jobs[key] = Job(key, rubric, item.question, item.answer)

    def score(self, cache: ScoreCache, progress: bool) -> None:
        """Run the backend on the jobs; each verdict is committed to the cache the moment it arrives."""
        bar = None
        if progress and self.jobs:
            from tqdm import tqdm

            bar = tqdm(
                total=len(self.jobs), desc=f"judge ({self.be.name}:{self.be.model})", unit="item", file=sys.stderr
            )

        def done(job: Job, verdict: Verdict) -> None:
            self.verdicts[job.key] = verdict
            # first thing after a paid reply: commit it, so nothing that fails later can lose it
            cache.put(job.key, verdict, backend=self.be.name, judge_model=self.identity, rubric_sha=job.rubric.sha)
            u = self.usage
            u.calls += verdict.calls
            u.invalid += verdict.invalid_replies
            u.prompt_tokens += verdict.prompt_tokens
            u.completion_tokens += verdict.completion_tokens
            u.unknown_usage += verdict.calls if verdict.usage_unknown else 0
            if bar is not None:
                bar.update(1)

        try:
            if self.jobs:
                _run_coroutine(self.be.run(list(self.jobs.values()), done))
        finally:
            if bar is not None:
                bar.close()
        self.usage.http_requests = getattr(self.be, "http_requests", 0)

    def _rows(self, f: Path, items: list[Item]) -> list[dict[str, Any]]:
        rows = []
        for i, item in enumerate(items):
            v = self.verdicts.get(self.keys[f, i]) or Verdict(score=None, status="missing")
            if v.score is None and self.first_error is None:
                self.first_error = _why_unscored(v)
            rows.append(
                {
                    "doc_id": item.doc_id,
                    "task": item.task,
                    "filter": item.filter,
                    "behaviour": item.behaviour,
                    "question": item.question,
                    "answer": item.answer,
                    "score": v.score,
                    "status": v.status,
                    "judge_reply": v.reply,
                    "p_valid": v.p_valid,
                    "rubric_sha": self.rubrics[item.behaviour].sha,
                    "judge_backend": self.be.name,
                    "judge_model": self.be.model,
                }
            )
        return rows

    def tabulate(self, targets: dict[Path, Path | None]) -> tuple[list[TaskSummary], list[_Output]]:
        """Per samples file: the judged rows and their summary (and where they go, when written)."""
        summaries: list[TaskSummary] = []
        outputs: list[_Output] = []
        for f, items in self.per_file.items():
            rows = self._rows(f, items)
            scores = [r["score"] for r in rows if r["score"] is not None]
            mean, std = _mean_std(scores)
            behaviours = sorted({it.behaviour for it in items})
            target = targets[f]
            summary = TaskSummary(
                task=task_of(f),
                behaviour=",".join(behaviours),
                samples_file=str(f),
                output_file=str(target) if target else None,
                n=len(rows),
                scored=len(scores),
                mean=mean,
                std=std,
                invalid=sum(r["status"] == "invalid" for r in rows),
                missing=len(rows) - len(scores),
                rubric_sha=",".join(sorted({self.rubrics[b].sha for b in behaviours})),
            )
            self.usage.missing += summary.missing
            summaries.append(summary)
            if target is not None:
                outputs.append((target, rows, summary))
        return summaries, outputs


_Output = tuple[Path, list[dict[str, Any]], TaskSummary]


def _write(result: JudgeSummary, outputs: list[_Output]) -> None:
    """The judged files and their summaries; nothing at all when no item got a score."""
    n = sum(t.n for t in result.tasks)
    if n and not any(t.scored for t in result.tasks):
        invalid = sum(t.invalid for t in result.tasks)
        raise JudgeFailedError(
            f"all {n} items failed ({n - invalid} without a reply, {invalid} with invalid replies) with judge "
            f"{result.backend}:{result.judge_model}; first error: {result.first_error}; nothing written, "
            "rerun once the judge works",
            result,
        )
    for target, rows, summary in outputs:
        write_atomic(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        meta = {**asdict(summary), "judge_backend": result.backend, "judge_model": result.judge_model}
        write_atomic(target.with_suffix(".summary.json"), json.dumps(meta, indent=2) + "\n")
