"""What the steered model said: the same open-ended question's answers at each multiplier, side by side.

Chosen deterministically from the judged files the report's cells came from: per behaviour, the items whose
judge score changed most and least between the lowest and the highest multiplier (ties broken by item id).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caa_eval.vocab import JUDGE_METRIC

__all__ = ["Answer", "Example", "choose_examples"]

_SETTING = ("layer", "site", "positions", "condition")


@dataclass(frozen=True)
class Answer:
    """One answer to the question at one multiplier."""

    multiplier: float
    answer: str
    score: float | None


@dataclass(frozen=True)
class Example:
    """One question with its answers in multiplier order and why it was chosen."""

    behaviour: str
    task: str
    doc_id: str
    question: str
    layer: str  # as the cell names it: "13", "[12,13]"
    site: str
    setting: str  # layer, site, positions and condition in words
    why: str
    answers: tuple[Answer, ...]
    sources: tuple[str, ...]  # the judged files, relative to the report folder


def _read_answers(path: Path) -> dict[str, dict[str, Any]]:
    """doc_id -> {question, answer, score} of one judged file (an unreadable file gives nothing)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "answer" in rec:
            out[str(rec.get("doc_id"))] = rec
    return out


def _series(report: dict[str, Any]) -> dict[tuple[Any, ...], dict[float, list[str]]]:
    """(behaviour, task, layer, site, positions, condition) -> multiplier -> judged source files."""
    series: dict[tuple[Any, ...], dict[float, list[str]]] = {}
    for cell in report.get("cells") or []:
        if cell.get("metric") != JUDGE_METRIC:
            continue
        key = (cell["behaviour"], cell["task"], *(cell.get(k) for k in _SETTING))
        by_m = series.setdefault(key, {})
        by_m[float(cell["multiplier"])] = [s for s in cell.get("sources") or [] if Path(s).name.startswith("judged_")]
        base = [s for s in cell.get("baseline_sources") or [] if Path(s).name.startswith("judged_")]
        if base and 0.0 not in by_m:
            by_m[0.0] = base
    return series


def _change(rows: dict[float, dict[str, Any]], lo: float, hi: float) -> float:
    a, b = rows.get(lo, {}).get("score"), rows.get(hi, {}).get("score")
    return math.nan if a is None or b is None else float(b) - float(a)


def _pick(changes: list[tuple[float, str]], k: int) -> list[tuple[str, str]]:
    """k item ids alternating largest and smallest change (by |change|), each once."""
    ranked = sorted((c for c in changes if not math.isnan(c[0])), key=lambda c: (-abs(c[0]), c[1]))
    calm = sorted((c for c in changes if not math.isnan(c[0])), key=lambda c: (abs(c[0]), c[1]))
    out: list[tuple[str, str]] = []
    if ranked and abs(ranked[0][0]) == abs(calm[0][0]):  # every item moved alike: no largest or smallest
        return [
            (doc, f"score change {change:+.1f}, as every item")
            for change, doc in sorted(ranked, key=lambda c: c[1])[:k]
        ]
    for big, small in zip(ranked, calm):
        for (change, doc), why in ((big, "largest score change"), (small, "smallest score change")):
            if len(out) < k and doc not in {d for d, _ in out}:
                out.append((doc, f"{why}: {change:+.1f}"))
    return out


def choose_examples(report: dict[str, Any], root: Path, out_dir: Path, per_behaviour: int = 2) -> list[Example]:
    """Open-ended examples for report.html, `per_behaviour` per behaviour (one setting each: the first with the
    most multipliers).

    Args:
        report: the report.json document of a run or sweep folder (its cells name their judged files).
        root: that run or sweep folder (the cells' source paths are relative to it).
        out_dir: the report folder (links to the samples are relative to it).
        per_behaviour: examples per behaviour.
    """
    chosen: list[Example] = []
    series = _series(report)
    done: set[str] = set()
    for key in sorted(series, key=lambda k: (k[0], -len(series[k]), str(k))):
        behaviour, task = key[0], key[1]
        by_m = series[key]
        if behaviour in done or len(by_m) < 2:
            continue
        done.add(behaviour)
        answers: dict[float, dict[str, dict[str, Any]]] = {m: {} for m in by_m}  # multiplier -> doc -> record
        for m, files in by_m.items():
            for f in files:
                answers[m].update(_read_answers(root / f))
        lo, hi = min(by_m), max(by_m)
        docs = sorted(set().union(*(set(a) for a in answers.values())))
        changes = [(_change({m: answers[m].get(d, {}) for m in by_m}, lo, hi), d) for d in docs]
        links = tuple(sorted({os.path.relpath(root / f, out_dir) for fs in by_m.values() for f in fs}))
        setting = ", ".join(f"{k} {v}" for k, v in zip(_SETTING, key[2:]) if v not in (None, ""))
        for doc, why in _pick(changes, per_behaviour):
            recs = [(m, answers[m].get(doc)) for m in sorted(by_m)]
            question = next((str(r.get("question", "")) for _, r in recs if r), "")
            row = tuple(Answer(m, str(r.get("answer", "")), r.get("score")) for m, r in recs if r)
            layer, site = str(key[2]), str(key[3] or "residual")
            chosen.append(Example(behaviour, task, doc, question, layer, site, setting, why, row, links))
    return chosen
