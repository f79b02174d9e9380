"""The score cache: every final verdict is committed to SQLite as it arrives.

So a rerun over the same samples makes no judge calls, a killed run resumes with only the missing items,
and a paid call is never paid twice. Server failures (`missing`) are not stored: a rerun asks again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from caa_eval.errors import CAAEvalError
from caa_eval.judge.rubrics import Rubric
from caa_eval.paths import cache_dir

__all__ = ["Verdict", "ScoreCache", "cache_key", "default_cache_path"]


@dataclass
class Verdict:
    """The outcome for one (rubric, question, answer): a score, or why there is none."""

    score: float | None
    status: str  # ok | invalid (judge replied twice without a bare number) | missing (no reply: server error)
    reply: str | None = None  # openai: the judge's last raw reply
    p_valid: float | None = None  # hf: probability mass the judge puts on the 11 score replies
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    invalid_replies: int = 0
    error: str | None = None  # missing: what went wrong (one line, key redacted); not stored
    usage_unknown: bool = False  # the server's token counts were absent or not numbers


def cache_key(backend: str, judge_model: str, rubric: Rubric, question: str, answer: str) -> str:
    """sha256 of (backend, judge model, rubric hash, sha256(question), sha256(answer)).

    Args:
        backend: `openai` or `hf`.
        judge_model: the judge's identity (model name, or a local folder's absolute path).
        rubric: the rubric the answer is graded with.
        question: the question asked.
        answer: the answer graded.
    """

    def digest(s: str) -> str:
        return hashlib.sha256(s.encode()).hexdigest()

    return digest(json.dumps([backend, judge_model, rubric.sha, digest(question), digest(answer)]))


def default_cache_path() -> Path:
    """`~/.cache/caa-eval/judge/scores.sqlite` (the root moves with CAA_EVAL_CACHE)."""
    return cache_dir() / "judge" / "scores.sqlite"


class ScoreCache:
    """SQLite (WAL) store of final verdicts; each verdict is committed as it arrives so a killed run resumes.

    Only `ok` and `invalid` verdicts are stored: `missing` means the server failed, so a rerun asks again.
    """

    def __init__(self, path: str | Path | None):
        """Open (creating if needed) the cache file.

        Args:
            path: the SQLite file; None keeps verdicts in memory for this run only.
        """
        self.path = Path(path) if path is not None else None
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # one thread at a time, but maybe not the creating one (see pipeline._run_coroutine)
            self._db = sqlite3.connect(str(self.path) if self.path else ":memory:", timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, backend TEXT, judge_model TEXT,"
                " rubric_sha TEXT, score REAL, status TEXT, reply TEXT, p_valid REAL,"
                " prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)"
            )
            self._db.commit()
        except (sqlite3.Error, OSError) as exc:
            raise CAAEvalError(f"judge cache {self.path}: {exc}; pass another --cache path or --no-cache") from None

    def get(self, key: str) -> Verdict | None:
        """The stored verdict for a cache key, or None."""
        row = self._db.execute(
            "SELECT score, status, reply, p_valid, prompt_tokens, completion_tokens FROM verdicts WHERE key = ?", (key,)
        ).fetchone()
        return Verdict(*row) if row else None

    def put(self, key: str, verdict: Verdict, *, backend: str, judge_model: str, rubric_sha: str) -> None:
        """Store and commit a final verdict at once (missing verdicts are not stored).

        Args:
            key: from cache_key.
            verdict: the judge's verdict.
            backend: `openai` or `hf` (kept for inspection).
            judge_model: the judge's identity.
            rubric_sha: the rubric's hash.
        """
        if verdict.status == "missing":
            return
        self._db.execute(
            "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                backend,
                judge_model,
                rubric_sha,
                verdict.score,
                verdict.status,
                verdict.reply,
                verdict.p_valid,
                verdict.prompt_tokens,
                verdict.completion_tokens,
                time.time(),
            ),
        )
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
