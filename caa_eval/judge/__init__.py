"""LLM judge for open-ended CAA answers: scores lm-eval `--log_samples` generations 0–10 per behaviour rubric.

Judging is a separate step after `lm_eval --log_samples` (not a metric inside lm-eval) so that it works
under `--predict_only`, runs concurrently, is cached across runs and can be redone with another judge
without regenerating. Two backends share one prompt: `openai` (any OpenAI-compatible chat server through
the official client) and `hf` (a local HF chat model, expected score from its next-token distribution).

Modules: rubrics (what 0 and 10 mean), prompt (the judge prompt and reply rule), samples (which files and
items are judged, where verdicts go), cache (SQLite verdict store), redact (the key stays out of logs),
backends + openai_backend + hf_backend, pipeline (judge_samples). See docs/judge.md.
"""

from __future__ import annotations

from caa_eval.judge.backends import BACKENDS, Backend, Job
from caa_eval.judge.cache import ScoreCache, Verdict, cache_key, default_cache_path
from caa_eval.judge.factory import make_backend
from caa_eval.judge.hf_backend import DEFAULT_HF_MODEL, HFBackend
from caa_eval.judge.openai_backend import DEFAULT_OPENAI_MODEL, OpenAIBackend
from caa_eval.judge.pipeline import JudgeFailedError, JudgeSummary, TaskSummary, Usage, judge_samples
from caa_eval.judge.prompt import SYSTEM_PROMPT, USER_TEMPLATE, build_messages, parse_score, quote
from caa_eval.judge.redact import redact, redacted_logs
from caa_eval.judge.rubrics import Rubric, load_rubrics
from caa_eval.judge.samples import Item, ensure_writable, find_samples, is_generation, output_path, read_items

__all__ = [
    "judge_samples",
    "JudgeSummary",
    "TaskSummary",
    "Usage",
    "JudgeFailedError",
    "Rubric",
    "load_rubrics",
    "SYSTEM_PROMPT",
    "USER_TEMPLATE",
    "quote",
    "build_messages",
    "parse_score",
    "Item",
    "read_items",
    "find_samples",
    "output_path",
    "is_generation",
    "ensure_writable",
    "ScoreCache",
    "Verdict",
    "cache_key",
    "default_cache_path",
    "redact",
    "redacted_logs",
    "BACKENDS",
    "Backend",
    "Job",
    "make_backend",
    "OpenAIBackend",
    "HFBackend",
    "DEFAULT_OPENAI_MODEL",
    "DEFAULT_HF_MODEL",
]
