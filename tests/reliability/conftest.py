"""Fixtures of the reliability suite (issue 14) and the writer of its table.

Every test under tests/reliability gets the `reliability` marker. With $CAA_EVAL_RELIABILITY_TABLE set to a
path, the run writes the table of cases and their observed outcomes there as Markdown (docs/reliability.md
holds the declared table: scripts/reliability_table.py).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness  # noqa: E402
import _inputs  # noqa: E402

TABLE_ENV = "CAA_EVAL_RELIABILITY_TABLE"
HERE = Path(__file__).resolve().parent
STARTED = time.time()  # conftest import: the start of collection


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="session")
def inputs(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    paths = _inputs.build(tmp_path_factory.mktemp("reliability"), tiny_model_dir)
    # the working folder every case runs in and the user cache (CAA_EVAL_CACHE): watched like the inputs
    paths["cwd"] = str(tmp_path_factory.mktemp("reliability_cwd"))
    paths["cache"] = str(tmp_path_factory.mktemp("reliability_cache"))
    return paths


@pytest.fixture(scope="session")
def shared() -> dict:
    return {}


@pytest.fixture
def env(inputs, capsys, shared, monkeypatch) -> _harness.Env:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("CAA_EVAL_DATA_DIR", str(Path(inputs["sweep"]) / "caa"))
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # `caa-eval eval` hands sys.argv to lm_eval
    monkeypatch.chdir(inputs["cwd"])
    monkeypatch.setenv("CAA_EVAL_CACHE", inputs["cache"])
    watched = [Path(inputs[k]) for k in ("root", "cwd", "cache")]
    return _harness.Env(paths=inputs, capsys=capsys, watched=watched, shared=shared)


def _cell(text: object, width: int = 150) -> str:
    s = str(text).replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= width else s[: width - 1] + "…"


def render(rows: list[dict], summary: str) -> str:
    inputs = [r for r in rows if r["section"] == "input"]
    faults = [r for r in rows if r["section"] == "fault"]
    checks = [r for r in rows if r["section"] == "check"]
    kinds = sorted({r["kind"] for r in inputs})
    counts = {k: sum(r["kind"] == k for r in inputs) for k in kinds}
    lines = [
        "# Reliability: observed outcomes of one run",
        "",
        f"Written by a run of `pytest -m reliability tests/reliability` with ${TABLE_ENV} set",
        f"({datetime.now(timezone.utc).strftime('%Y-%m-%d')}); the declared table is docs/reliability.md.",
        "",
        f"**{summary}**",
        "",
        "Every input case asserts: the exit code (2 for bad input; the Python API raises `CAAEvalError`), exactly "
        "one error line containing the expected text (which names the input and says what to write instead), no "
        "traceback, and that no file under the test's folder was written, changed or removed (all hashed before "
        "and after). Fault cases kill or starve a run and check that the rerun ends with the same results as an "
        "uninterrupted run.",
        "",
        f"## Bad inputs ({len(inputs)} cases, {sum(r['result'] == 'pass' for r in inputs)} pass)",
        "",
        "Classes: " + ", ".join(f"{k} ({counts[k]})" for k in kinds) + ".",
        "",
        "| # | class | entry point | bad input | expected | observed (exit, message) | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in enumerate(inputs, 1):
        expected = f"{r['code']}: «{r['expect']}»"
        observed = f"{r['observed_code']}: {r['message']}"
        lines.append(
            f"| {n} | {_cell(r['kind'])} | `{_cell(r['entry'], 60)}` | {_cell(r['bad'], 90)} | "
            f"{_cell(expected, 80)} | {_cell(observed, 220)} | {r['result']} |"
        )
    lines += [
        "",
        f"## Faults ({len(faults)}, {sum(r['result'] == 'pass' for r in faults)} survived)",
        "",
        "| # | fault | entry point | what was done | expected | observed | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in enumerate(faults, 1):
        lines.append(
            f"| {n} | {_cell(r['kind'])} | `{_cell(r['entry'], 60)}` | {_cell(r['bad'], 120)} | "
            f"{_cell(r['expect'], 120)} | {_cell(r['message'], 260)} | {r['result']} |"
        )
    lines += [
        "",
        f"## Labels and statistics ({len(checks)})",
        "",
        "| # | check | entry point | input | expected | observed | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in enumerate(checks, 1):
        lines.append(
            f"| {n} | {_cell(r['kind'])} | `{_cell(r['entry'], 60)}` | {_cell(r['bad'], 120)} | "
            f"{_cell(r['expect'], 120)} | {_cell(r['message'], 260)} | {r['result']} |"
        )
    return "\n".join(lines) + "\n"


def summary_line(rows: list[dict]) -> str:
    inputs = [r for r in rows if r["section"] == "input"]
    faults = [r for r in rows if r["section"] == "fault"]
    ok_in = sum(r["result"] == "pass" for r in inputs)
    ok_f = sum(r["result"] == "pass" for r in faults)
    ok = all(r["result"] == "pass" for r in rows)
    lost = "nothing lost" if ok else "FAILURES: see the table"
    return (
        f"reliability: {ok_in}/{len(inputs)} bad-input cases handled (exit code, one line, no traceback, "
        f"nothing written), {ok_f}/{len(faults)} faults survived, {lost}"
    )


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    rows = _harness.ROWS
    if not rows:
        return
    line = summary_line(rows)
    terminalreporter.write_line(line, bold=True)
    target = os.environ.get(TABLE_ENV)
    if target:
        stats = terminalreporter.stats
        counts = ", ".join(
            f"{len(stats.get(k, []))} {k}" for k in ("passed", "failed", "error", "skipped") if stats.get(k)
        )
        took = f" in {time.time() - STARTED:.0f} s"
        Path(target).write_text(render(rows, f"{line}. pytest -m reliability: {counts}{took}"), encoding="utf-8")
        terminalreporter.write_line(f"reliability table written to {target}")
