"""The table-driven harness of the reliability suite: a bad input is a `Case`; `check` runs it and asserts
the four rules of issue 14; every declared case is a row of docs/reliability.md (see _doc.py).

The rules, for every entry point (`caa-eval <command>`, plain `lm_eval --model steered-hf`, the Python API):
1. the exit code (2 for bad input; the Python API raises CAAEvalError instead),
2. ONE error line that names the input and says what to write instead (a distinctive substring is matched);
   for caa-eval commands stderr holds exactly that one line (after argparse's usage block for usage errors),
   so a warning or log line before the error fails the case; `lm_eval`'s own log lines are allowed,
3. no traceback,
4. nothing written or overwritten: every file under the watched folders is hashed before and after (the
   inputs' folder, which also holds the working folder the case runs in and the user cache CAA_EVAL_CACHE).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caa_eval.errors import CAAEvalError

REPO = Path(__file__).resolve().parents[2]
API = "CAAEvalError"  # the "exit code" column of Python API cases

ROWS: list[dict[str, Any]] = []  # one per case and fault test, rendered by conftest.py at the end of the run


@dataclass
class Env:
    """What a case runs against: input paths by name, pytest's capsys, and shared expensive objects."""

    paths: dict[str, str]
    capsys: Any
    watched: list[Path]
    shared: dict[str, Any] = field(default_factory=dict)

    def fmt(self, text: str) -> str:
        return text.format(**self.paths)


@dataclass
class Outcome:
    code: int | str
    message: str  # the one error line ("" if there was none)
    stderr: str
    error_lines: int


@dataclass(frozen=True)
class Case:
    """One bad input: where it enters, what it is, what must come out."""

    id: str
    kind: str  # the class of input (vector file, steering config, contrast pairs, ...)
    entry: str  # the entry point, as a user would type or call it
    bad: str  # the bad input in words
    run: Callable[[Env], Outcome]
    expect: str  # distinctive substring of the one error line
    code: int | str = 2


def error_lines(stderr: str) -> list[str]:
    """The lines of a caa-eval command's stderr that are not argparse's usage block: for bad input there must be
    exactly one (the error line); any warning, log line or second message before or after it counts too."""
    lines = stderr.splitlines()
    if lines and lines[0].startswith("usage: "):  # argparse: `usage: ...` (wrapped, indented) + the error line
        lines = lines[1:]
        while lines and lines[0].startswith(" "):
            lines = lines[1:]
    return [line for line in lines if line.strip()] if stderr.strip() else []


_PROGRESS = re.compile(r"^\S[^|]*:\s+\d+%\|.*\| \d+/\d+ \[")  # a tqdm bar: `Loading weights: 100%|███| 39/39 [...`


def without_progress_bars(stderr: str) -> str:
    """stderr without tqdm progress-bar redraws: for errors found after a load whose bar the user saw finish."""
    return "\n".join(line for line in re.split(r"[\r\n]", stderr) if line.strip() and not _PROGRESS.match(line))


def lenient_error_lines(stderr: str) -> list[str]:
    """For `lm_eval` (not a caa-eval command): its own log lines are allowed; count the lines saying `error:`."""
    return [line for line in stderr.splitlines() if " error: " in f" {line} " or line.startswith("error:")]


def _outcome(code: int | str, stderr: str, strict: bool = True) -> Outcome:
    lines = error_lines(stderr) if strict else lenient_error_lines(stderr)
    return Outcome(code, lines[-1] if lines else "", stderr, len(lines))


class _ConsoleLog:
    """What the console script's logging.basicConfig does (pytest's handlers make it a no-op in-process): log
    records go to stderr, so a warning printed before an error line is counted as a second line."""

    def __enter__(self) -> None:
        import logging

        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        root = logging.getLogger()
        self.level = root.level
        root.setLevel(logging.INFO)
        root.addHandler(self.handler)

    def __exit__(self, *exc: object) -> None:
        import logging

        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self.level)


def cli(*argv: str, after_load: bool = False) -> Callable[[Env], Outcome]:
    """`caa-eval ARGV` in this process (`{name}` placeholders are input paths); `after_load`: the error comes after
    a model load, whose progress bar may precede the one error line (nothing else may)."""

    def run(env: Env) -> Outcome:
        from caa_eval import cli as caa_cli

        env.capsys.readouterr()
        try:
            with _ConsoleLog():
                code = caa_cli.main([env.fmt(a) for a in argv])
        except SystemExit as exc:  # argparse's own usage errors: what the console script exits with
            code = exc.code
        _, err = env.capsys.readouterr()
        # `caa-eval eval` is lm_eval itself: its own log lines are allowed, as for `lm_eval`
        return _outcome(code, without_progress_bars(err) if after_load else err, strict=argv[0] != "eval")

    run.argv = argv  # type: ignore[attr-defined]
    return run


def api(call: Callable[[Env], Any]) -> Callable[[Env], Outcome]:
    """A Python API call that must raise CAAEvalError (any other exception is a bug and fails the test)."""

    def run(env: Env) -> Outcome:
        try:
            call(env)
        except CAAEvalError as exc:
            text = str(exc)
            return Outcome(API, f"CAAEvalError: {text}", "", 1 + text.count("\n"))
        return Outcome("returned normally", "", "", 0)

    return run


def lm_eval_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMEVAL_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def subprocess_cli(executable: str, *argv: str, timeout: float = 300) -> Callable[[Env], Outcome]:
    """A console script (`lm_eval`, `caa-eval`) as a user runs it: the real exit code and stderr."""

    def run(env: Env) -> Outcome:
        exe = str(Path(sys.executable).with_name(executable))
        proc = subprocess.run(
            [exe, *[env.fmt(a) for a in argv]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=lm_eval_env(),
            cwd=env.paths["cwd"],
        )
        return _outcome(proc.returncode, proc.stderr, strict=executable != "lm_eval" and argv[:1] != ("eval",))

    return run


def snapshot(folders: Iterable[Path]) -> dict[str, str]:
    """Every file and folder under `folders`: relative path -> sha256 (folders: "dir")."""
    state: dict[str, str] = {}
    for root in folders:
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                state[os.path.join(dirpath, d)] = "dir"
            for f in filenames:
                p = os.path.join(dirpath, f)
                with open(p, "rb") as fh:
                    state[p] = hashlib.sha256(fh.read()).hexdigest()
    return state


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    return [f"+{p}" for p in added] + [f"-{p}" for p in removed] + [f"~{p}" for p in changed]


def check(case: Case, env: Env) -> None:
    """Run one case and assert the four rules; record the row either way."""
    before = snapshot(env.watched)
    row = {
        "id": case.id,
        "kind": case.kind,
        "entry": case.entry,
        "bad": case.bad,
        "expect": case.expect,
        "code": case.code,
        "observed_code": None,
        "message": "",
        "result": "FAIL",
        "section": "input",
    }
    ROWS.append(row)
    outcome = case.run(env)
    row["observed_code"], row["message"] = outcome.code, outcome.message.replace(env.paths["root"] + "/", "")
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    assert outcome.code == case.code, f"exit {outcome.code!r}, expected {case.code!r}: {outcome.stderr[-2000:]}"
    assert outcome.error_lines == 1, f"{outcome.error_lines} error lines: {outcome.stderr[-2000:]}"
    assert case.expect in outcome.message, f"{case.expect!r} not in {outcome.message!r}"
    diff = changes(before, snapshot(env.watched))
    assert not diff, f"files written or changed: {diff[:10]}"
    row["result"] = "pass"


def record_fault(
    id: str, kind: str, entry: str, bad: str, expect: str, observed: str, section: str = "fault"
) -> dict[str, Any]:
    """A row for a fault test (SIGKILL, disk full) or another check; the test sets result to 'pass' at its end."""
    row = {
        "id": id,
        "kind": kind,
        "entry": entry,
        "bad": bad,
        "expect": expect,
        "code": "-",
        "observed_code": "-",
        "message": observed,
        "result": "FAIL",
        "section": section,
    }
    ROWS.append(row)
    return row
