"""Datasets: contrast-pair files (CAA format), their validation, and where the CAA data lives.

Nothing here ships data: the CAA datasets and MMLU are found at run time (task metadata / --metadata path,
then an environment variable, then the user cache filled by `caa-eval data download`). Only facts about the
upstream files (sizes, sha256, CAA's MMLU subset index) are recorded, in `caa_eval._data_facts`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caa_eval._data_facts import MMLU_FILES, MMLU_SUBSET
from caa_eval.errors import CAAEvalError
from caa_eval.paths import cache_dir

PAIR_FIELDS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
_ANSWER = re.compile(r"^\s*\(([A-Z])\)")


@dataclass(frozen=True)
class ContrastPair:
    """One CAA item: a question with its choices, and the answers that do / do not show the behaviour."""

    question: str
    answer_matching_behavior: str
    answer_not_matching_behavior: str

    @property
    def matching_letter(self) -> str:
        return _letter(self.answer_matching_behavior)

    @property
    def not_matching_letter(self) -> str:
        return _letter(self.answer_not_matching_behavior)


def _letter(answer: str) -> str:
    m = _ANSWER.match(answer)
    return m.group(1) if m else ""


def read_records(path: str | Path) -> list[dict]:
    """A JSON list or JSONL file as a list of dicts, with errors that name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise CAAEvalError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CAAEvalError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CAAEvalError(f"{path}: invalid JSON on line {lineno}: {exc.msg} (expected a JSON list or JSONL)") from None
    if not isinstance(records, list):
        raise CAAEvalError(f"{path}: expected a JSON list of objects or JSONL, got {type(records).__name__}")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise CAAEvalError(f"{path}: item {i} is {type(rec).__name__}, expected an object")
    return records


def load_contrast_pairs(path: str | Path, require_ab: bool = False, free_text_answers: bool = False) -> list[ContrastPair]:
    """Load and validate contrast pairs; every problem names the item index and the field.

    free_text_answers: answers are whole replies, not "(A)"/"(B)" (extraction with read="answer_mean")."""
    path = Path(path)
    records = read_records(path)
    if not records:
        raise CAAEvalError(f"{path}: no items")
    pairs = []
    for i, rec in enumerate(records):
        for field in PAIR_FIELDS:
            value = rec.get(field)
            if value is None:
                raise CAAEvalError(f"{path}: item {i} has no field {field!r} (need {', '.join(PAIR_FIELDS)})")
            if isinstance(value, list) and value and isinstance(value[0], str):
                value = value[0]  # Anthropic MWE files sometimes wrap answers in a list
            if not isinstance(value, str) or not value.strip():
                raise CAAEvalError(f"{path}: item {i} field {field!r} must be a non-empty string")
            rec[field] = value
        pair = ContrastPair(*(rec[f] for f in PAIR_FIELDS))
        if free_text_answers:
            if pair.answer_matching_behavior.strip() == pair.answer_not_matching_behavior.strip():
                raise CAAEvalError(f"{path}: item {i}: matching and non-matching answers are the same text")
            pairs.append(pair)
            continue
        for field, letter in (("answer_matching_behavior", pair.matching_letter), ("answer_not_matching_behavior", pair.not_matching_letter)):
            if not letter:
                raise CAAEvalError(f"{path}: item {i} field {field!r} is {rec[field]!r}; expected an answer like \"(A)\"")
            if require_ab and letter not in "AB":
                raise CAAEvalError(f"{path}: item {i} field {field!r} is {rec[field]!r}; A/B tasks need \"(A)\" or \"(B)\"")
        if pair.matching_letter == pair.not_matching_letter:
            raise CAAEvalError(f"{path}: item {i}: matching and non-matching answers are the same letter")
        pairs.append(pair)
    return pairs


def file_sha256(path: str | Path) -> str:
    """Full SHA-256 of a file, read in blocks (data files are recorded and checked by this digest)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Where the data lives: explicit path (task metadata / --metadata / argument) > env var > user cache.
# --------------------------------------------------------------------------------------------------

BEHAVIOURS: tuple[str, ...] = (
    "coordinate-other-ais",
    "corrigible-neutral-HHH",
    "hallucination",
    "myopic-reward",
    "survival-instinct",
    "sycophancy",
    "refusal",
)
CAA_DATA_ENV = "CAA_EVAL_DATA_DIR"
MMLU_DIR_ENV = "CAA_EVAL_MMLU_DIR"
SPLIT_FILES = {
    "generate": "generate/{b}/generate_dataset.json",
    "test": "test/{b}/test_dataset_ab.json",
    "open_ended": "test/{b}/test_dataset_open_ended.json",
}
NON_AB_POLICIES = ("exclude", "zero", "error")
_GET_CAA = f"run `caa-eval data download`, or set {CAA_DATA_ENV} to a folder laid out like CAA's datasets/ (generate/, test/)"
_GET_MMLU = f"run `caa-eval data download`, or set {MMLU_DIR_ENV} to a folder holding the MMLU test CSVs (<subject>_test.csv)"
log = logging.getLogger(__name__)


def default_caa_dir() -> Path:
    """Where `caa-eval data download` puts the CAA datasets by default."""
    return cache_dir() / "data" / "caa"


def default_mmlu_dir() -> Path:
    """Where `caa-eval data download` puts the MMLU test CSVs by default."""
    return cache_dir() / "data" / "mmlu" / "test"


def canonical_behaviour(name: str) -> str:
    """`sycophancy`, `coordinate_other_ais`, `Corrigible-Neutral-HHH` ... -> CAA's folder name."""
    key = name.strip().lower().replace("_", "-")
    for b in BEHAVIOURS:
        if b.lower() == key:
            return b
    raise CAAEvalError(f"unknown behaviour {name!r}; choose from {', '.join(BEHAVIOURS)} (or pass a file path)")


def task_suffix(behaviour: str) -> str:
    """Task-name form of a behaviour: `coordinate-other-ais` -> `coordinate_other_ais`."""
    return canonical_behaviour(behaviour).replace("-", "_")


def ab_task_name(behaviour: str, balanced: bool = False) -> str:
    return f"caa_ab_{'balanced_' if balanced else ''}{task_suffix(behaviour)}"


def open_task_name(behaviour: str) -> str:
    return f"caa_open_{task_suffix(behaviour)}"


@dataclass(frozen=True)
class DataLocation:
    """A resolved data folder and why it was chosen (shown by `caa-eval tasks` / `caa-eval data status`)."""

    path: Path
    source: str  # "metadata", "env CAA_EVAL_DATA_DIR", "cache"


def _caa_root(path: Path) -> Path | None:
    """Accept CAA's datasets/ folder itself or a checkout of the CAA repo (which holds datasets/)."""
    for cand in (path, path / "datasets"):
        if (cand / "test").is_dir() or (cand / "generate").is_dir():
            return cand
    return None


def _mmlu_root(path: Path) -> Path | None:
    """Accept the folder of `<subject>_test.csv` files or its parent holding `test/`."""
    for cand in (path, path / "test", path / "data" / "test"):
        if cand.is_dir() and any(cand.glob("*_test.csv")):
            return cand
    return None


def _locate(explicit: str | Path | None, env: str, default: Path, root: Callable[[Path], Path | None],
            what: str, how: str) -> DataLocation:
    """First of explicit path > env var > default; a wrong explicit/env folder is an error, not a fallback."""
    if explicit:
        path, source = Path(explicit).expanduser(), "metadata"
    elif os.environ.get(env):
        path, source = Path(os.environ[env]).expanduser(), f"env {env}"
    else:
        path, source = default, "cache"
    found = root(path) if path.is_dir() else None
    if found is None:
        if source == "cache":
            raise CAAEvalError(f"{what} not found (no {env}, nothing in {default}); {how}")
        raise CAAEvalError(f"{what} not found at {path} (from {source}); {how}")
    return DataLocation(found, source)


def locate_caa_data(path: str | Path | None = None) -> DataLocation:
    """CAA's datasets/ folder: `path` (task metadata `caa_data_dir`) > $CAA_EVAL_DATA_DIR > user cache.

    An explicitly given folder that is wrong is an error, never silently replaced by another one.
    """
    return _locate(path, CAA_DATA_ENV, default_caa_dir(), _caa_root, "CAA datasets", _GET_CAA)


def locate_mmlu(path: str | Path | None = None) -> DataLocation:
    """Folder of MMLU test CSVs: `path` (metadata `mmlu_dir`) > $CAA_EVAL_MMLU_DIR > user cache."""
    return _locate(path, MMLU_DIR_ENV, default_mmlu_dir(), _mmlu_root, "MMLU test CSVs", _GET_MMLU)


def caa_data_file(relative: str, data_dir: str | Path | None = None) -> Path:
    """A file under CAA's datasets/ folder, with an error that says where it looked and how to fix it."""
    loc = locate_caa_data(data_dir)
    path = loc.path / relative
    if not path.is_file():
        raise CAAEvalError(f"{relative} missing from the CAA data folder {loc.path} (from {loc.source}); {_GET_CAA}")
    return path


def resolve_behaviour_pairs(behaviour: str, split: str = "generate", data_dir: str | Path | None = None) -> Path:
    """Path of a CAA behaviour file by name; split is `generate` (vector pairs), `test` (A/B) or `open_ended`.

    A name that is an existing file path is returned as is, so CLIs can take either.
    """
    if split not in SPLIT_FILES:
        raise CAAEvalError(f"unknown split {split!r}; choose from {', '.join(SPLIT_FILES)}")
    as_path = Path(behaviour).expanduser()
    if as_path.suffix in (".json", ".jsonl") and as_path.is_file():
        return as_path
    return caa_data_file(SPLIT_FILES[split].format(b=canonical_behaviour(behaviour)), data_dir)


# --------------------------------------------------------------------------------------------------
# A/B test items and open-ended questions, as rows for lm-eval docs.
# --------------------------------------------------------------------------------------------------

_OPTION = re.compile(r"(?m)^([ \t]*)\(([A-Z])\)")


def check_unique(questions: Sequence[str], path: str | Path) -> None:
    """Duplicate questions would double-count items (and a contradictory duplicate is a data error)."""
    seen: dict[str, int] = {}
    for i, q in enumerate(questions):
        key = q.strip()
        if key in seen:
            raise CAAEvalError(f"{path}: item {i} repeats the question of item {seen[key]}; remove the duplicate")
        seen[key] = i


def check_no_overlap(test_path: str | Path, pairs_path: str | Path) -> None:
    """Test questions must not be among the vector's contrast pairs (that would measure memorised pairs)."""
    pairs = {r.get("question", "").strip() for r in read_records(pairs_path)}
    for i, rec in enumerate(read_records(test_path)):
        if str(rec.get("question", "")).strip() in pairs:
            raise CAAEvalError(f"{test_path}: item {i} also appears in the contrast pairs {pairs_path}; use disjoint files")


def swap_ab(question: str) -> str:
    """The question with the texts of options (A) and (B) exchanged (the letters stay in place).

    Options are lines starting with `(X)` (any indent); an option's text runs to the next option line or the
    end. Used by the letter-balanced tasks to cancel letter-position bias.
    """
    marks = list(_OPTION.finditer(question))
    letters = [m.group(2) for m in marks]
    if letters.count("A") != 1 or letters.count("B") != 1:
        raise CAAEvalError(f"cannot swap options: expected one '(A)' and one '(B)' option line in {question[:80]!r}...")
    spans: dict[str, tuple[int, int]] = {}
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(question)
        spans[m.group(2)] = (m.end(), end)
    (a0, a1), (b0, b1) = spans["A"], spans["B"]
    first, second = sorted([(a0, a1, "A"), (b0, b1, "B")])
    texts = {"A": question[a0:a1], "B": question[b0:b1]}

    def body(letter: str) -> str:
        # keep each slot's own trailing newline(s): swap only the option text proper
        own, other = texts[letter], texts["B" if letter == "A" else "A"]
        return other.rstrip("\n") + own[len(own.rstrip("\n")) :]

    return (
        question[: first[0]]
        + body(first[2])
        + question[first[1] : second[0]]
        + body(second[2])
        + question[second[1] :]
    )


@dataclass
class ABItems:
    """A/B test rows for lm-eval plus what was left out and why."""

    rows: list[dict[str, Any]]
    excluded: list[int]
    path: Path


def load_ab_items(path: str | Path, behaviour: str = "", non_ab: str = "exclude", balanced: bool = False,
                  warn: bool = True) -> ABItems:
    """Validated A/B test items as lm-eval docs.

    Items whose matching/non-matching answers are not (A)/(B) (4 survival-instinct test items are (C)/(E))
    cannot be scored as p(A)/(p(A)+p(B)). `non_ab` says what to do: `exclude` (default; logged), `zero` (CAA's
    own scoring: the item counts with p_match = 0), `error`.
    """
    if non_ab not in NON_AB_POLICIES:
        raise CAAEvalError(f"caa_non_ab={non_ab!r}; choose from {', '.join(NON_AB_POLICIES)}")
    path = Path(path)
    pairs = load_contrast_pairs(path)
    check_unique([p.question for p in pairs], path)
    rows: list[dict[str, Any]] = []
    excluded: list[int] = []
    for i, p in enumerate(pairs):
        is_ab = {p.matching_letter, p.not_matching_letter} == {"A", "B"}
        if not is_ab:
            if non_ab == "error":
                raise CAAEvalError(
                    f"{path}: item {i} answers {p.answer_matching_behavior!r}/{p.answer_not_matching_behavior!r}; "
                    "A/B tasks need (A) and (B) (set caa_non_ab to 'exclude' or 'zero' to keep going)"
                )
            if non_ab == "exclude" or balanced:
                excluded.append(i)
                continue
        prompt = p.question.strip()
        row: dict[str, Any] = {
            "item": i,
            "behaviour": behaviour,
            "question": p.question,
            "user_prompt": prompt,  # what the model sees as the user turn (stripped, as CAA does)
            "answer_matching_behavior": p.answer_matching_behavior,
            "answer_not_matching_behavior": p.answer_not_matching_behavior,
            "matching": p.matching_letter,
            "not_matching": p.not_matching_letter,
            "target": p.matching_letter,
            "scored": is_ab,
        }
        if balanced:
            try:
                row["user_prompt_swapped"] = swap_ab(prompt)
            except CAAEvalError as exc:
                raise CAAEvalError(f"{path}: item {i}: {exc}") from None
        rows.append(row)
    if excluded and warn:
        log.warning(
            "%s: %d item(s) whose answers are not (A)/(B) %s (items %s); %s",
            path, len(excluded), "left out" if non_ab == "exclude" or balanced else "", excluded,
            "set caa_non_ab=zero to score them 0 as CAA does" if not balanced else "balanced tasks always leave them out",
        )
    if not rows:
        raise CAAEvalError(f"{path}: no A/B items left to score")
    return ABItems(rows, excluded, path)


def load_open_items(path: str | Path, behaviour: str = "") -> list[dict[str, Any]]:
    """Open-ended questions (`{"question": ...}` per item) as lm-eval docs; `question` is what the judge reads."""
    path = Path(path)
    records = read_records(path)
    if not records:
        raise CAAEvalError(f"{path}: no items")
    rows = []
    for i, rec in enumerate(records):
        q = rec.get("question")
        if not isinstance(q, str) or not q.strip():
            raise CAAEvalError(f"{path}: item {i} needs a non-empty string field 'question'")
        rows.append({"item": i, "behaviour": behaviour, "question": q, "user_prompt": q.strip()})
    check_unique([r["question"] for r in rows], path)
    return rows


# --------------------------------------------------------------------------------------------------
# MMLU two-option items (CAA's 570-item subset, or all 14,042 test questions with a seeded wrong option).
# --------------------------------------------------------------------------------------------------

MMLU_PROMPT = "{question}\n\nChoices:\n(A) {a}\n(B) {b}"
_LETTERS = "ABCD"


@dataclass(frozen=True)
class MMLUQuestion:
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # index of the correct choice


def mmlu_subjects() -> list[str]:
    """The 57 MMLU subjects (file stems without `_test`)."""
    return sorted(name[: -len("_test.csv")] for name in MMLU_FILES)


def read_mmlu_subject(subject: str, mmlu_dir: str | Path | None = None) -> list[MMLUQuestion]:
    """One subject's test questions from `<subject>_test.csv`.

    Reads both the HF-export layout (header `question,choice0..3,answer` with a 0-based index) and the
    original headerless hendrycks layout (`question,A,B,C,D,letter`).
    """
    loc = locate_mmlu(mmlu_dir)
    path = loc.path / f"{subject}_test.csv"
    if not path.is_file():
        raise CAAEvalError(f"{path.name} missing from the MMLU folder {loc.path} (from {loc.source}); {_GET_MMLU}")
    with path.open(newline="", encoding="utf-8") as f:
        records = list(csv.reader(f))
    if records and [c.strip().lower() for c in records[0]] == ["question", "choice0", "choice1", "choice2", "choice3", "answer"]:
        records, header = records[1:], True
    else:
        header = False
    out = []
    for n, rec in enumerate(records):
        if len(rec) != 6:
            raise CAAEvalError(f"{path}: data row {n} has {len(rec)} fields, expected 6 (question, 4 choices, answer)")
        ans = rec[5].strip()
        idx = int(ans) if header and ans.isdigit() else _LETTERS.find(ans) if not header else -1
        if not 0 <= idx < 4:
            raise CAAEvalError(f"{path}: data row {n} has answer {ans!r}, expected {'0-3' if header else 'A-D'}")
        out.append(MMLUQuestion(rec[0], (rec[1], rec[2], rec[3], rec[4]), idx))
    return out


def _mmlu_row(subject: str, row: int, q: MMLUQuestion, wrong: int, correct_letter: str) -> dict[str, Any]:
    right_text, wrong_text = q.choices[q.answer], q.choices[wrong]
    a, b = (right_text, wrong_text) if correct_letter == "A" else (wrong_text, right_text)
    prompt = MMLU_PROMPT.format(question=q.question, a=a, b=b)
    return {
        "prompt": prompt,  # exactly CAA's mmlu.json field
        "user_prompt": prompt.strip(),  # the user turn: CAA strips it before templating
        "correct": correct_letter,
        "incorrect": "B" if correct_letter == "A" else "A",
        "correct_full_text": right_text,
        "incorrect_full_text": wrong_text,
        "category": subject,
        "mmlu_row": row,
        "target": correct_letter,
    }


def mmlu_subset_rows(subject: str | None = None, mmlu_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """CAA's two-option MMLU items (10 per subject), rebuilt from the MMLU CSVs with the recorded index.

    Same prompts, letters and order as CAA's datasets/test/mmlu/mmlu.json; `subject=None` gives all 570.
    """
    rows = []
    for subj, tokens in MMLU_SUBSET:
        if subject is not None and subj != subject:
            continue
        questions = read_mmlu_subject(subj, mmlu_dir)
        for token in tokens.split():
            row, right, wrong, letter = token.split(".")
            q = questions[int(row)]
            if q.answer != int(right):
                raise CAAEvalError(f"MMLU {subj} row {row}: correct answer differs from CAA's subset; the CSVs are not the expected MMLU test split")
            rows.append(_mmlu_row(subj, int(row), q, int(wrong), letter))
    if not rows:
        raise CAAEvalError(f"unknown MMLU subject {subject!r}; choose from {', '.join(mmlu_subjects())}")
    return rows


def mmlu_full_rows(subject: str, seed: int = 0, mmlu_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every test question of a subject in CAA's two-option form: gold + one seeded wrong option, seeded letters.

    The draw depends only on (seed, subject, row), so it is the same for any subset or order of subjects.
    """
    rows = []
    for n, q in enumerate(read_mmlu_subject(subject, mmlu_dir)):
        rng = random.Random(f"{seed}:{subject}:{n}")
        wrong = rng.choice([i for i in range(4) if i != q.answer])
        rows.append(_mmlu_row(subject, n, q, wrong, rng.choice("AB")))
    return rows


# --------------------------------------------------------------------------------------------------
# `caa-eval tasks` and `caa-eval data`
# --------------------------------------------------------------------------------------------------

TEMPLATES = {
    "ab": "caa_ab/_caa_ab_template_yaml",
    "balanced": "caa_ab_balanced/_caa_ab_balanced_template_yaml",
    "open": "caa_open/_caa_open_template_yaml",
}


def template_path(kind: str = "ab") -> Path:
    """Absolute path of a shipped base template, for `include:` in a user's task YAML."""
    from caa_eval.paths import tasks_dir

    if kind not in TEMPLATES:
        raise CAAEvalError(f"unknown template {kind!r}; choose from {', '.join(TEMPLATES)}")
    return tasks_dir() / TEMPLATES[kind]


@dataclass(frozen=True)
class TaskInfo:
    """One shipped task or group as `caa-eval tasks` shows it."""

    name: str
    items: int | None  # None when the data is missing
    source: str  # data file/folder (and why it was chosen), or "missing: <how to get it>"
    group: str = ""  # parent group, "" for top level
    subtasks: int = 0  # > 0 for groups


def _describe_task(cfg: dict[str, Any], yaml_path: Path | None, caa_dir: str | Path | None,
                   mmlu_dir: str | Path | None) -> tuple[int | None, str]:
    loader = str(cfg.get("custom_dataset", "")).rpartition(".")[2]
    kwargs = cfg.get("dataset_kwargs") or {}
    try:
        if loader in ("load_ab", "load_ab_balanced", "load_open"):
            split = "open_ended" if loader == "load_open" else "test"
            if kwargs.get("test_file"):  # a file named by the YAML, relative to it
                path = Path(kwargs["test_file"]).expanduser()
                path = path if path.is_absolute() or yaml_path is None else yaml_path.parent / path
                where = f"{path} (task YAML)"
                if not path.is_file():
                    raise CAAEvalError(f"data file {path} not found (named in the task YAML {yaml_path})")
            else:
                path = resolve_behaviour_pairs(kwargs["caa_behaviour"], split, caa_dir)
                where = f"{path} ({locate_caa_data(caa_dir).source})"
            if loader == "load_open":
                return len(load_open_items(path)), where
            items = load_ab_items(path, non_ab="exclude", balanced=loader == "load_ab_balanced", warn=False)
            note = f" [{len(items.excluded)} non-A/B left out]" if items.excluded else ""
            return len(items.rows), where + note
        if loader in ("load_mmlu_2opt", "load_mmlu_2opt_full"):
            loc = locate_mmlu(mmlu_dir)
            subject = kwargs["mmlu_subject"]
            n = len(read_mmlu_subject(subject, mmlu_dir))
            if loader == "load_mmlu_2opt":
                n = sum(len(tokens.split()) for subj, tokens in MMLU_SUBSET if subj == subject)
            return n, f"{loc.path / f'{subject}_test.csv'} ({loc.source})"
    except CAAEvalError as exc:
        return None, f"missing: {exc}"
    return None, f"(data defined by the task YAML: {loader or 'dataset_path'})"


def list_tasks(caa_dir: str | Path | None = None, mmlu_dir: str | Path | None = None) -> list[TaskInfo]:
    """Every task and group in the shipped task folder, with item counts and where the data comes from."""
    from lm_eval.tasks._index import Kind, TaskIndex

    from caa_eval.paths import tasks_dir

    index = TaskIndex.build([tasks_dir()])
    out: list[TaskInfo] = []
    grouped: set[str] = set()
    for name, entry in sorted(index.items()):
        if entry.kind != Kind.GROUP:
            continue
        members = [t if isinstance(t, str) else t.get("task", "") for t in (entry.cfg or {}).get("task", [])]
        infos = []
        for m in members:
            if m in index and index[m].cfg is not None:
                n, src = _describe_task(index[m].cfg, index[m].yaml_path, caa_dir, mmlu_dir)
                infos.append(TaskInfo(m, n, src, group=name))
                grouped.add(m)
        total = None if any(i.items is None for i in infos) else sum(i.items or 0 for i in infos)
        missing = next((i.source for i in infos if i.items is None), "")
        out.append(TaskInfo(name, total, missing or f"{len(infos)} tasks", subtasks=len(infos)))
        out.extend(infos)
    for name, entry in sorted(index.items()):
        if entry.kind in (Kind.TASK, Kind.PY_TASK) and name not in grouped and entry.cfg is not None:
            n, src = _describe_task(entry.cfg, entry.yaml_path, caa_dir, mmlu_dir)
            out.append(TaskInfo(name, n, src))
    return out


def configure_tasks_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="also list every per-subject MMLU task")
    parser.add_argument("--template-path", nargs="?", const="ab", choices=sorted(TEMPLATES), metavar="KIND",
                        help=f"print the absolute path of a base template to `include:` in your own YAML ({', '.join(TEMPLATES)}; default ab) and exit")
    parser.add_argument("--caa-data-dir", help=f"CAA datasets folder (default: ${CAA_DATA_ENV}, then the user cache)")
    parser.add_argument("--mmlu-dir", help=f"MMLU test CSV folder (default: ${MMLU_DIR_ENV}, then the user cache)")


def run_tasks_cli(args: argparse.Namespace) -> int:
    if args.template_path:
        print(template_path(args.template_path))
        return 0
    rows = [r for r in list_tasks(args.caa_data_dir, args.mmlu_dir)
            if args.all or not (r.group and r.group.startswith("caa_mmlu_2opt"))]  # 57 subjects each: --all
    problems: list[str] = []
    width = max(len(r.name) for r in rows) + 4
    print(f"{'task':<{width}}{'items':>7}  data")
    for r in rows:
        source = r.source
        if source.startswith("missing: "):
            if source not in problems:
                problems.append(source)
            source = f"missing (see [{problems.index(source) + 1}])"
        elif r.subtasks:
            source = f"group of {r.subtasks} tasks"
        name = f"  {r.name}" if r.group else r.name
        print(f"{name:<{width}}{'-' if r.items is None else r.items:>7}  {source}")
    for k, problem in enumerate(problems, 1):
        print(f"[{k}] {problem}")
    print("\nRun e.g.: lm_eval --model hf --model_args pretrained=PATH --apply_chat_template --tasks caa_ab,caa_mmlu_2opt")
    return 0


def configure_data_cli(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    dl = sub.add_parser("download", help="fetch the CAA datasets and MMLU test CSVs (pinned commits, sha256-checked)")
    dl.add_argument("--dest", help="root folder receiving caa/ and mmlu/test/ (default: the user cache, where tasks look last)")
    dl.add_argument("--base-url", help="mirror with the same layout ({URL}/caa/<path>, {URL}/mmlu/test/<file>); file:// works")
    dl.add_argument("--only", choices=("caa", "mmlu"), help="fetch one dataset only")
    dl.add_argument("--force", action="store_true", help="download again even if the files verify")
    dl.add_argument("--no-progress", action="store_true", help="no progress bar")
    st = sub.add_parser("status", help="where the tasks will find their data; --verify checks sha256 of every file")
    st.add_argument("--verify", action="store_true", help="hash every file against the recorded sha256")
    st.add_argument("--caa-data-dir", help=f"CAA datasets folder (default: ${CAA_DATA_ENV}, then the user cache)")
    st.add_argument("--mmlu-dir", help=f"MMLU test CSV folder (default: ${MMLU_DIR_ENV}, then the user cache)")


def run_data_cli(args: argparse.Namespace) -> int:
    from caa_eval import download as dl

    if args.action == "download":
        what = (args.only,) if args.only else dl.DATASETS
        dl.download(what, dest=args.dest, base_url=args.base_url, force=args.force, progress=not args.no_progress)
        if args.dest:
            root = Path(args.dest).expanduser().resolve()
            print("Downloaded and verified. Point the tasks at this copy with:")
            if "caa" in what:
                print(f"  export {CAA_DATA_ENV}={root / 'caa'}")
            if "mmlu" in what:
                print(f"  export {MMLU_DIR_ENV}={root / 'mmlu' / 'test'}")
        else:
            print(f"Downloaded and verified into {cache_dir() / 'data'} (found by the tasks automatically).")
        return 0
    if args.action == "status":
        bad = 0
        for kind, locate, explicit in (("caa", locate_caa_data, args.caa_data_dir), ("mmlu", locate_mmlu, args.mmlu_dir)):
            try:
                loc = locate(explicit)
            except CAAEvalError as exc:
                print(f"{kind}: missing: {exc}")
                bad += 1
                continue
            line = f"{kind}: {loc.path} ({loc.source})"
            if args.verify:
                status = dl.verify_dir(kind, loc.path)
                counts = {s: sum(1 for v in status.values() if v == s) for s in ("ok", "missing", "modified")}
                line += f": {counts['ok']} ok, {counts['missing']} missing, {counts['modified']} modified"
                bad += counts["missing"] + counts["modified"]
                for rel, s in status.items():
                    if s != "ok":
                        print(f"  {s}: {rel}")
            print(line)
        return 1 if bad else 0
    print("usage: caa-eval data {download,status} [--help]")
    return 2
