"""`caa-eval sweep`: behaviours x conditions x layers x sites x positions x multipliers in one process.

One YAML file describes the sweep (docs/sweeps.md). The runner

- extracts the missing steering vectors once (all layers the sweep needs in one pass per behaviour and site),
  optionally rescales them to CAA's per-layer mean norm across the sweep's behaviours;
- loads each model once (per condition) as `steered-hf` and reconfigures the hooks per cell
  (`SteeredHFLM.set_steering`), so a cell costs only its forward passes;
- runs each cell through `lm_eval.simple_evaluate` and writes lm-eval's own files (results_<ts>.json with the
  steering config in `config.model_args`, samples_<task>_<ts>.jsonl) into `RUN_DIR/cells/<cell_id>/`; open-ended
  cells are judged right after generation;
- runs the multiplier-0 baseline once per condition and task (not per layer or behaviour vector): an A/B task's
  baseline belongs to its behaviour, a shared task's (MMLU) baseline is the `*` baseline of every vector;
- is resumable: a cell is built in `RUN_DIR/.partial/` and moved into `cells/` when complete, then `DONE` is
  written; a rerun skips DONE cells and redoes everything else;
- ends with `caa_eval.report.build_report` into `RUN_DIR/report/`.

The folder layout is the one `caa_eval.stats.long_table_from_runs` reads (docs/statistics.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import gc
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from caa_eval import __version__
from caa_eval.errors import CAAEvalError
from caa_eval.files import write_atomic

log = logging.getLogger(__name__)

FORMAT = "caa-eval/sweep-v1"
DEFAULT_TASKS = ("caa_ab_{behaviour}", "caa_mmlu_2opt")
DEFAULT_CONDITION = "base"
SITES = ("residual", "mlp", "attn")
JUDGE_BACKENDS = ("hf", "openai")
OPEN_PREFIX = "caa_open_"
PRIMARY_METRICS = ("p_match", "p_correct", "gen_len", "acc")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

CONFIG_KEYS = {
    "model": "HF path/ID or the alias smollm2-135m-instruct",
    "behaviours": "list of CAA behaviour names, or entries {name, pairs: FILE, ab_test: FILE, open_test: FILE, tasks: [...]}",
    "vectors": "folder of vector files <behaviour>.safetensors (extracted if missing), or {dir, normalize, batch_size}",
    "normalize": "true = CAA's per-layer mean-norm rescaling across the sweep's behaviours",
    "layers": "list of layers, e.g. [13] or [10, 13, 16]; a nested list [10, 12] steers both at once; or '10-14'",
    "multipliers": "list of numbers, e.g. [-1, 0, 1] (0, the baseline, is always added)",
    "sites": "list of residual | mlp | attn",
    "positions": "list of after_instruction | all | generated | span:START:END | regex:PATTERN",
    "tasks": "task names or templates per behaviour, e.g. [caa_ab_{behaviour}, caa_mmlu_2opt, caa_open_{behaviour}]",
    "conditions": "list of {name, pretrained, peft, model_args, system_instruction, allow_fingerprint_mismatch}",
    "limit": "items per task (MMLU: per subject); a number >= 1, or a fraction < 1",
    "batch_size": "lm-eval batch size (a number or 'auto')",
    "device": "cpu | cuda | cuda:0 ... (default: cuda if available, else cpu)",
    "dtype": "model dtype for lm-eval (default auto)",
    "judge": "{backend: hf|openai, model, concurrency, batch_size, rubrics, base_url, cache}",
    "gen_kwargs": "generation overrides for open-ended tasks, e.g. {max_gen_toks: 50}",
    "output": "run folder (default outputs/<config file stem>)",
    "include_path": "extra lm-eval task folder(s) with your own task YAMLs",
    "include_default_tasks": "true = also index lm-eval's built-in tasks (slower start)",
    "caa_data_dir": "CAA datasets/ folder (default $CAA_EVAL_DATA_DIR, then the download cache)",
    "mmlu_dir": "folder of MMLU test CSVs (default $CAA_EVAL_MMLU_DIR, then the download cache)",
    "report": "true (default) = build RUN_DIR/report at the end",
}
_ALIASES = {"behaviors": "behaviours", "out": "output", "output_dir": "output", "condition": "conditions"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def format_multiplier(m: float) -> str:
    """`0`, `+1`, `-0.5`: one spelling per multiplier (the same as caa_eval.stats)."""
    return "0" if m == 0 else f"{m:+g}"


# ---------------------------------------------------------------------------------------------------- config


@dataclass
class Behaviour:
    """A behaviour of the sweep: its name, where its contrast pairs come from, and its task list."""

    name: str  # CAA folder spelling for CAA behaviours (coordinate-other-ais), the user's name otherwise
    pairs: Path | None = None  # None: CAA's generate set, resolved at run time
    ab_test: Path | None = None  # custom behaviours: A/B test file -> generated task caa_ab_<name>
    open_test: Path | None = None  # custom behaviours: open-ended file -> generated task caa_open_<name>
    tasks: list[str] | None = None  # templates; None = the sweep's `tasks`

    @property
    def task_name(self) -> str:
        """Spelling inside task names: `-` becomes `_` (caa_ab_coordinate_other_ais)."""
        return self.name.replace("-", "_")

    @property
    def custom(self) -> bool:
        return self.pairs is not None


@dataclass
class Condition:
    """One model variant: a different checkpoint, a PEFT adapter, extra model args or a system prompt."""

    name: str = DEFAULT_CONDITION
    pretrained: str | None = None  # None = the sweep's model
    peft: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    system_instruction: str | None = None
    allow_fingerprint_mismatch: bool | None = None  # None: true when the weights differ from `model` (pretrained/peft)

    def model_key(self, model: str) -> str:
        """Conditions with equal keys share one loaded model."""
        return json.dumps([self.pretrained or model, self.peft, self.model_args], sort_keys=True, default=str)

    @property
    def allow_mismatch(self) -> bool:
        if self.allow_fingerprint_mismatch is not None:
            return bool(self.allow_fingerprint_mismatch)
        return bool(self.peft or self.pretrained)


@dataclass
class JudgeSettings:
    backend: str = "hf"
    model: str | None = None
    concurrency: int = 8
    batch_size: int = 8
    rubrics: str | None = None
    base_url: str | None = None
    cache: str | bool | None = True  # True: judge's default cache; False: none; str: this file


@dataclass
class SweepConfig:
    model: str
    behaviours: list[Behaviour]
    layers: list[list[int]]
    multipliers: list[float]
    sites: list[str] = field(default_factory=lambda: ["residual"])
    positions: list[str] = field(default_factory=lambda: ["after_instruction"])
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    conditions: list[Condition] = field(default_factory=lambda: [Condition()])
    vectors_dir: Path | None = None  # None: RUN_DIR/vectors
    normalize: bool = False
    extract_batch_size: int = 16
    limit: int | float | None = None
    batch_size: int | str = 16
    device: str | None = None
    dtype: str | None = None
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    gen_kwargs: dict[str, Any] | None = None
    output: Path = Path("outputs/sweep")
    include_path: list[Path] = field(default_factory=list)
    include_default_tasks: bool = False
    caa_data_dir: Path | None = None
    mmlu_dir: Path | None = None
    report: bool = True
    source: str = "<dict>"  # where the config came from, for messages

    @property
    def vectors_folder(self) -> Path:
        return self.vectors_dir if self.vectors_dir is not None else self.output / "vectors"

    def behaviour_tasks(self, b: Behaviour) -> list[str]:
        return [t.format(behaviour=b.task_name) for t in (b.tasks if b.tasks is not None else self.tasks)]

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if dataclasses.is_dataclass(v):
                return {k: clean(x) for k, x in dataclasses.asdict(v).items()}
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            return v
        out = {f.name: clean(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["vectors_dir"] = str(self.vectors_folder)
        return out


def _err(source: str, key: str, problem: str, fix: str) -> CAAEvalError:
    return CAAEvalError(f"{source}: key '{key}': {problem}; {fix}")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _path(value: Any, base: Path, source: str, key: str) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise _err(source, key, f"expected a path, got {value!r}", "write a file or folder path")
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


def _parse_layers(value: Any, source: str) -> list[list[int]]:
    fix = "use e.g. layers: [13], [10, 13, 16], '10-14', or [[10, 12]] to steer two layers at once"
    if value is None:
        raise _err(source, "layers", "missing", fix)
    items = [value] if isinstance(value, (int, str)) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise _err(source, "layers", f"{value!r} is not a non-empty list", fix)
    out: list[list[int]] = []
    for item in items:
        try:
            if isinstance(item, bool):
                raise ValueError
            if isinstance(item, int):
                out.append([item])
            elif isinstance(item, str):
                from caa_eval.core.extract import parse_layers

                parsed = parse_layers(item)
                if not parsed:
                    raise ValueError
                out.extend([x] for x in parsed)
            elif isinstance(item, (list, tuple)) and item and all(isinstance(x, int) and not isinstance(x, bool) for x in item):
                out.append(sorted(set(item)))
            else:
                raise ValueError
        except (ValueError, CAAEvalError):
            raise _err(source, "layers", f"{item!r} is not a layer", fix) from None
    bad = [x for group in out for x in group if x < 0]
    if bad:
        raise _err(source, "layers", f"negative layer {bad[0]}", "layers count from 0")
    unique: list[list[int]] = []
    for group in out:
        if group not in unique:
            unique.append(group)
    return unique


def _parse_multipliers(value: Any, source: str) -> list[float]:
    fix = "use e.g. multipliers: [-1, 0, 1]"
    items = _as_list(value)
    if not items:
        raise _err(source, "multipliers", "missing or empty", fix)
    out = []
    for item in items:
        try:
            if isinstance(item, bool):
                raise ValueError
            m = float(item)
        except (TypeError, ValueError):
            raise _err(source, "multipliers", f"{item!r} is not a number", fix) from None
        if not math.isfinite(m):
            raise _err(source, "multipliers", f"{item!r} is not finite", fix)
        out.append(m + 0.0)
    return sorted(set(out) | {0.0})


def _parse_behaviours(value: Any, source: str, base: Path) -> list[Behaviour]:
    from caa_eval import data

    fix = f"list CAA behaviours ({', '.join(data.BEHAVIOURS)}) or entries {{name: NAME, pairs: FILE}}"
    items = _as_list(value)
    if not items:
        raise _err(source, "behaviours", "missing or empty", fix)
    out: list[Behaviour] = []
    for item in items:
        if isinstance(item, str):
            try:
                out.append(Behaviour(data.canonical_behaviour(item)))
            except CAAEvalError:
                raise _err(source, "behaviours", f"unknown CAA behaviour {item!r}",
                           f"choose from {', '.join(data.BEHAVIOURS)}, or give a custom entry {{name: {item}, pairs: FILE}}") from None
            continue
        if not isinstance(item, dict) or "name" not in item:
            raise _err(source, "behaviours", f"entry {item!r} not understood", fix)
        unknown = set(item) - {"name", "pairs", "ab_test", "open_test", "tasks"}
        if unknown:
            raise _err(source, "behaviours", f"entry {item['name']!r} has unknown field(s) {sorted(unknown)}",
                       "allowed: name, pairs, ab_test, open_test, tasks")
        name = str(item["name"]).strip()
        tasks = None
        if "tasks" in item:
            tasks = [str(t) for t in _as_list(item["tasks"])]
            if not tasks:
                raise _err(source, "behaviours", f"entry {name!r}: empty tasks", "list at least one task or drop the field")
        if item.get("pairs") is None:
            if item.get("ab_test") or item.get("open_test"):
                raise _err(source, "behaviours", f"entry {name!r} has test files but no pairs", "add pairs: FILE (the contrast pairs)")
            try:
                canonical = data.canonical_behaviour(name)
            except CAAEvalError:
                raise _err(source, "behaviours", f"{name!r} is not a CAA behaviour and has no pairs file",
                           "add pairs: FILE with its contrast pairs") from None
            out.append(Behaviour(canonical, tasks=tasks))
            continue
        if not _NAME_RE.match(name) or "__" in name:
            raise _err(source, "behaviours", f"name {name!r} is not usable in task and folder names",
                       "use letters, digits, '-', '_' and '.' (no '__')")
        b = Behaviour(name, pairs=_path(item["pairs"], base, source, "behaviours.pairs"), tasks=tasks,
                      ab_test=_path(item["ab_test"], base, source, "behaviours.ab_test") if item.get("ab_test") else None,
                      open_test=_path(item["open_test"], base, source, "behaviours.open_test") if item.get("open_test") else None)
        for what in ("pairs", "ab_test", "open_test"):
            p = getattr(b, what)
            if p is not None and not p.is_file():
                raise _err(source, "behaviours", f"{name}: {what} file {p} not found", "fix the path (relative paths are relative to the config file)")
        out.append(b)
    names = [b.name for b in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _err(source, "behaviours", f"{dup[0]!r} is listed twice", "list each behaviour once")
    return out


def _parse_conditions(value: Any, source: str, base: Path) -> list[Condition]:
    fix = "use conditions: [{name: base}, {name: ft, peft: PATH}]"
    if value is None:
        return [Condition()]
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _err(source, "conditions", "empty list", fix)
    out = []
    for item in items:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not item.get("name"):
            raise _err(source, "conditions", f"entry {item!r} has no name", fix)
        unknown = set(item) - {f.name for f in dataclasses.fields(Condition)}
        if unknown:
            raise _err(source, "conditions", f"entry {item['name']!r} has unknown field(s) {sorted(unknown)}",
                       f"allowed: {', '.join(f.name for f in dataclasses.fields(Condition))}")
        name = str(item["name"])
        if not _NAME_RE.match(name) or "__" in name:
            raise _err(source, "conditions", f"name {name!r} is not usable in folder names", "use letters, digits, '-', '_' and '.'")
        model_args = item.get("model_args") or {}
        if not isinstance(model_args, dict):
            raise _err(source, "conditions", f"{name}: model_args must be a mapping", "write model_args: {dtype: float32}")
        pretrained, peft = item.get("pretrained"), item.get("peft")
        # local paths are relative to the config file; HF ids (no such local path) are kept as written
        if isinstance(pretrained, str) and (base / pretrained).exists() and not Path(pretrained).is_absolute():
            pretrained = str(base / pretrained)
        if isinstance(peft, str) and (base / peft).exists() and not Path(peft).is_absolute():
            peft = str(base / peft)
        out.append(Condition(name=name, pretrained=pretrained, peft=peft, model_args=dict(model_args),
                             system_instruction=item.get("system_instruction"),
                             allow_fingerprint_mismatch=item.get("allow_fingerprint_mismatch")))
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _err(source, "conditions", f"{dup[0]!r} is listed twice", "give every condition its own name")
    return out


def _parse_judge(value: Any, source: str, base: Path) -> JudgeSettings:
    if value is None:
        return JudgeSettings()
    if not isinstance(value, dict):
        raise _err(source, "judge", f"{value!r} is not a mapping", "write judge: {backend: hf, model: smollm2-135m-instruct}")
    allowed = {f.name for f in dataclasses.fields(JudgeSettings)}
    unknown = set(value) - allowed
    if unknown:
        raise _err(source, "judge", f"unknown field(s) {sorted(unknown)}", f"allowed: {', '.join(sorted(allowed))}")
    js = JudgeSettings(**value)
    if js.backend not in JUDGE_BACKENDS:
        raise _err(source, "judge.backend", f"{js.backend!r} unknown", f"choose {' or '.join(JUDGE_BACKENDS)}")
    for key in ("concurrency", "batch_size"):
        v = getattr(js, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise _err(source, f"judge.{key}", f"{v!r} is not a positive integer", f"write e.g. {key}: 8")
    if js.rubrics:
        js.rubrics = str(_path(js.rubrics, base, source, "judge.rubrics"))
    if isinstance(js.cache, str):
        js.cache = str(_path(js.cache, base, source, "judge.cache"))
    return js


def _parse_limit(value: Any, source: str) -> int | float | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        limit = float(value)
    except (TypeError, ValueError):
        raise _err(source, "limit", f"{value!r} is not a number", "use a count such as 20, or a fraction such as 0.5") from None
    if limit <= 0 or not math.isfinite(limit):
        raise _err(source, "limit", f"{value!r} must be positive", "use a count such as 20, or a fraction such as 0.5")
    if limit >= 1:
        if not limit.is_integer():
            raise _err(source, "limit", f"{value!r} is neither a whole count nor a fraction below 1", "use e.g. 20 or 0.5")
        return int(limit)
    return limit


def config_from_dict(raw: dict[str, Any], source: str = "<dict>", base: Path | None = None,
                     default_output: Path | None = None) -> SweepConfig:
    """Validate a config mapping; relative paths are taken relative to `base` (the config file's folder)."""
    from caa_eval.core.hooks import Positions

    base = base or Path.cwd()
    if not isinstance(raw, dict):
        raise CAAEvalError(f"{source}: expected a mapping of keys (model, behaviours, layers, multipliers, ...)")
    cfg_in: dict[str, Any] = {}
    for key, value in raw.items():
        key = _ALIASES.get(str(key), str(key))
        if key not in CONFIG_KEYS:
            close = difflib.get_close_matches(key, list(CONFIG_KEYS), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(CONFIG_KEYS)}"
            raise CAAEvalError(f"{source}: unknown key '{key}'; {hint}")
        cfg_in[key] = value
    model = cfg_in.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _err(source, "model", "missing", "write model: smollm2-135m-instruct (or an HF path/ID)")
    if (base / model).exists() and not Path(model).is_absolute():
        model = str(base / model)

    vectors = cfg_in.get("vectors")
    normalize = cfg_in.get("normalize", False)
    extract_bs = 16
    vectors_dir = None
    if isinstance(vectors, dict):
        unknown = set(vectors) - {"dir", "normalize", "batch_size"}
        if unknown:
            raise _err(source, "vectors", f"unknown field(s) {sorted(unknown)}", "allowed: dir, normalize, batch_size")
        if "normalize" in vectors:
            normalize = vectors["normalize"]
        extract_bs = vectors.get("batch_size", 16)
        vectors = vectors.get("dir")
    if vectors is not None:
        vectors_dir = _path(vectors, base, source, "vectors")
    if not isinstance(normalize, bool):
        raise _err(source, "normalize", f"{normalize!r} is not true/false", "write normalize: true or false")
    if not isinstance(extract_bs, int) or isinstance(extract_bs, bool) or extract_bs < 1:
        raise _err(source, "vectors.batch_size", f"{extract_bs!r} is not a positive integer", "write e.g. batch_size: 16")

    behaviours = _parse_behaviours(cfg_in.get("behaviours"), source, base)
    if normalize and len(behaviours) < 2:
        raise _err(source, "normalize", "mean-norm rescaling needs at least two behaviours",
                   "add behaviours or set normalize: false")

    sites = [str(s) for s in _as_list(cfg_in.get("sites", ["residual"]))]
    if not sites or any(s not in SITES for s in sites):
        bad = next((s for s in sites if s not in SITES), "(empty)")
        raise _err(source, "sites", f"{bad!r} is not a site", f"use a list of {', '.join(SITES)}")
    positions_raw = cfg_in.get("positions", ["after_instruction"])
    positions = [str(p) for p in (positions_raw if isinstance(positions_raw, list) else [positions_raw])]
    if not positions:
        raise _err(source, "positions", "empty list", "use e.g. positions: [after_instruction]")
    normalized_positions = []
    for p in positions:
        try:
            normalized_positions.append(str(Positions.parse(p)))
        except CAAEvalError as exc:
            raise _err(source, "positions", str(exc), "see docs/sweeps.md") from None

    tasks = [str(t) for t in _as_list(cfg_in.get("tasks", list(DEFAULT_TASKS)))]
    if not tasks:
        raise _err(source, "tasks", "empty list", "use e.g. tasks: [caa_ab_{behaviour}, caa_mmlu_2opt]")
    for b in behaviours:
        for t in (b.tasks or tasks):
            try:
                t.format(behaviour="x")
            except (KeyError, IndexError, ValueError):
                raise _err(source, "tasks", f"template {t!r} is not valid",
                           "the only placeholder is {behaviour}, e.g. caa_ab_{behaviour}") from None

    batch_size = cfg_in.get("batch_size", 16)
    if not ((isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1)
            or (isinstance(batch_size, str) and batch_size.startswith("auto"))):
        raise _err(source, "batch_size", f"{batch_size!r} is not a positive integer or 'auto'", "write e.g. batch_size: 16")

    include_path = [_path(p, base, source, "include_path") for p in _as_list(cfg_in.get("include_path"))]
    for p in include_path:
        if not p.is_dir():
            raise _err(source, "include_path", f"{p} is not a folder", "give folders holding task YAMLs")
    output = cfg_in.get("output")
    out_dir = _path(output, base, source, "output") if output is not None else (default_output or Path("outputs/sweep"))
    gen_kwargs = cfg_in.get("gen_kwargs")
    if gen_kwargs is not None and (not isinstance(gen_kwargs, dict) or not gen_kwargs):
        raise _err(source, "gen_kwargs", f"{gen_kwargs!r} is not a mapping", "write e.g. gen_kwargs: {max_gen_toks: 50}")
    for key in ("include_default_tasks", "report"):
        if not isinstance(cfg_in.get(key, False), bool):
            raise _err(source, key, f"{cfg_in[key]!r} is not true/false", f"write {key}: true or false")
    return SweepConfig(
        model=model.strip(), behaviours=behaviours, layers=_parse_layers(cfg_in.get("layers"), source),
        multipliers=_parse_multipliers(cfg_in.get("multipliers"), source), sites=list(dict.fromkeys(sites)),
        positions=list(dict.fromkeys(normalized_positions)), tasks=tasks,
        conditions=_parse_conditions(cfg_in.get("conditions"), source, base), vectors_dir=vectors_dir,
        normalize=normalize, extract_batch_size=extract_bs, limit=_parse_limit(cfg_in.get("limit"), source),
        batch_size=batch_size, device=cfg_in.get("device"), dtype=cfg_in.get("dtype"),
        judge=_parse_judge(cfg_in.get("judge"), source, base), gen_kwargs=gen_kwargs, output=out_dir, include_path=include_path,
        include_default_tasks=bool(cfg_in.get("include_default_tasks", False)),
        caa_data_dir=_path(cfg_in["caa_data_dir"], base, source, "caa_data_dir") if cfg_in.get("caa_data_dir") else None,
        mmlu_dir=_path(cfg_in["mmlu_dir"], base, source, "mmlu_dir") if cfg_in.get("mmlu_dir") else None,
        report=bool(cfg_in.get("report", True)), source=source,
    )


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read a YAML sweep config and apply overrides (CLI flags: key -> value, None = not given)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CAAEvalError(f"sweep config {path} not found; write a YAML file (see examples/sweep_smollm2.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise CAAEvalError(f"{path}:{line} is not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from None
    if raw is None:
        raise CAAEvalError(f"{path}: the file is empty; see examples/sweep_smollm2.yaml")
    if not isinstance(raw, dict):
        raise CAAEvalError(f"{path}: expected a mapping of keys (model, behaviours, layers, multipliers, ...)")
    raw = dict(raw)
    cwd = Path.cwd()
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "output" or (key == "model" and Path(value).expanduser().exists()):  # CLI paths: relative to the cwd
            value = str((cwd / Path(value).expanduser()) if not Path(value).expanduser().is_absolute() else Path(value).expanduser())
        raw = {k: v for k, v in raw.items() if _ALIASES.get(k, k) != key}
        raw[key] = value
    return config_from_dict(raw, source=str(path), base=path.resolve().parent,
                            default_output=Path("outputs") / path.stem)


# ---------------------------------------------------------------------------------------------------- plan


@dataclass
class Cell:
    """One lm-eval run: a steering configuration (or the multiplier-0 baseline) on a list of tasks."""

    id: str
    condition: str
    multiplier: float
    tasks: list[str]
    behaviour: str | None = None  # the vector's behaviour; for a baseline: the task's behaviour, or None (shared)
    layer: list[int] | None = None
    site: str | None = None
    positions: str | None = None
    vector: str | None = None  # vector file used (None for baselines)

    @property
    def is_baseline(self) -> bool:
        return self.multiplier == 0

    def cell_json(self) -> dict[str, Any]:
        """The keys caa_eval.stats reads (see docs/statistics.md)."""
        return {"behaviour": self.behaviour, "condition": self.condition,
                "layer": self.layer[0] if self.layer and len(self.layer) == 1 else self.layer,
                "site": self.site, "positions": self.positions, "multiplier": self.multiplier,
                "tasks": list(self.tasks), "vector": self.vector}


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")
    if slug != text.replace(":", "_"):
        slug = f"{slug[:24]}_{hashlib.sha256(text.encode()).hexdigest()[:6]}"
    return slug or "x"


def vector_file_name(behaviour: str, site: str) -> str:
    return f"{behaviour}.safetensors" if site == "residual" else f"{behaviour}.{site}.safetensors"


def vector_path(cfg: SweepConfig, behaviour: str, site: str) -> Path:
    """The vector file a cell uses: the extracted one, or its mean-norm rescaled copy in RUN_DIR."""
    folder = cfg.output / "vectors_normalized" if cfg.normalize else cfg.vectors_folder
    return folder / vector_file_name(behaviour, site)


def baseline_behaviour(task: str, behaviours: Sequence[Behaviour]) -> str | None:
    """A behaviour-specific task's baseline belongs to that behaviour; shared tasks get None (stats' '*')."""
    for b in behaviours:
        for prefix in ("caa_ab_balanced_", "caa_ab_", "caa_open_"):
            if task == prefix + b.task_name:
                return b.name
    return None


def plan_cells(cfg: SweepConfig) -> list[Cell]:
    """Every cell of the sweep, grouped by condition, baselines first."""
    cells: list[Cell] = []
    for cond in cfg.conditions:
        all_tasks = list(dict.fromkeys(t for b in cfg.behaviours for t in cfg.behaviour_tasks(b)))
        for task in all_tasks:
            cells.append(Cell(id=f"baseline__{cond.name}__{task}", condition=cond.name, multiplier=0.0, tasks=[task],
                              behaviour=baseline_behaviour(task, cfg.behaviours)))
        for b in cfg.behaviours:
            tasks = cfg.behaviour_tasks(b)
            for layer in cfg.layers:
                for site in cfg.sites:
                    for positions in cfg.positions:
                        for m in cfg.multipliers:
                            if m == 0:
                                continue
                            cid = "__".join([b.name, cond.name, "L" + "+".join(map(str, layer)), site, _slug(positions),
                                             "m" + format_multiplier(m)])
                            cells.append(Cell(id=cid, condition=cond.name, multiplier=m, tasks=tasks, behaviour=b.name,
                                              layer=layer, site=site, positions=positions,
                                              vector=str(vector_path(cfg, b.name, site))))
    ids = [c.id for c in cells]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CAAEvalError(f"{cfg.source}: two cells would share the folder {dup[0]!r}; rename a behaviour or condition")
    return cells


# ---------------------------------------------------------------------------------------------------- files


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n"


class _Lock:
    """RUN_DIR/.lock holding pid@host: two sweeps writing one folder would wipe each other's cells."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.owned = False

    def __enter__(self) -> _Lock:
        me = f"{os.getpid()}@{socket.gethostname()}"
        if self.path.exists():
            other = self.path.read_text(encoding="utf-8").strip()
            pid, _, host = other.partition("@")
            alive = False
            if host == socket.gethostname() and pid.isdigit():
                try:
                    os.kill(int(pid), 0)
                    alive = int(pid) != os.getpid()
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    alive = True
            if alive:
                raise CAAEvalError(f"{self.path.parent}: another sweep (pid {pid}) is writing this folder; wait for it "
                                   f"or stop it (a stale lock from a dead process is taken over automatically)")
        write_atomic(self.path, me + "\n")
        self.owned = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            with contextlib.suppress(OSError):
                self.path.unlink()


def _versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {"caa-eval": __version__}
    for dist in ("lm_eval", "torch", "transformers", "peft", "datasets"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    out["python"] = platform.python_version()
    return out


# ---------------------------------------------------------------------------------------------------- runner


@dataclass
class SweepResult:
    run_dir: Path
    cells: list[Cell]
    ran: list[str]
    skipped: list[str]
    report: Path | None
    seconds: float


def _task_manager(cfg: SweepConfig, generated: Path) -> Any:
    from caa_eval.lmeval.register import ensure_registered

    ensure_registered()
    from lm_eval.tasks import TaskManager

    from caa_eval.paths import tasks_dir

    paths = [str(tasks_dir())]
    if generated.is_dir() and any(generated.glob("*.yaml")):
        paths.append(str(generated))
    paths += [str(p) for p in cfg.include_path]
    metadata = {}
    if cfg.caa_data_dir:
        metadata["caa_data_dir"] = str(cfg.caa_data_dir)
    if cfg.mmlu_dir:
        metadata["mmlu_dir"] = str(cfg.mmlu_dir)
    return TaskManager(include_path=paths, include_defaults=cfg.include_default_tasks, metadata=metadata or None)


def write_custom_tasks(cfg: SweepConfig, folder: Path) -> list[str]:
    """Task YAMLs for custom behaviours' test files (caa_ab_<name>, caa_open_<name>), on the shipped templates."""
    from caa_eval import data

    written = []
    for b in cfg.behaviours:
        for kind, test_file, prefix in (("ab", b.ab_test, "caa_ab_"), ("open", b.open_test, "caa_open_")):
            if test_file is None:
                continue
            name = prefix + b.task_name
            lines = [f"include: {data.template_path(kind)}", f"task: {name}", "dataset_kwargs:",
                     f"  test_file: {json.dumps(str(test_file.resolve()))}", f"  behaviour: {json.dumps(b.name)}"]
            if kind == "ab" and b.pairs is not None:
                lines.append(f"  pairs_file: {json.dumps(str(b.pairs.resolve()))}")
            text = "\n".join(lines) + "\n"
            path = folder / f"{name}.yaml"
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                write_atomic(path, text)
            written.append(name)
    return written


def check_tasks(cfg: SweepConfig, task_manager: Any) -> None:
    known = set(task_manager.all_tasks)
    for b in cfg.behaviours:
        for task in cfg.behaviour_tasks(b):
            if task not in known:
                close = difflib.get_close_matches(task, sorted(known), n=1)
                hint = f"did you mean {close[0]!r}?" if close else "see `caa-eval tasks`"
                extra = (" (a custom behaviour needs ab_test/open_test files, or its own task YAML via include_path)"
                         if b.custom else "")
                raise CAAEvalError(f"{cfg.source}: key 'tasks': task {task!r} (behaviour {b.name}) not found{extra}; {hint}")


def _open_tasks(cell: Cell) -> list[str]:
    return [t for t in cell.tasks if t.startswith(OPEN_PREFIX)]


class _VectorStore:
    """Extraction of missing vectors (and missing layers), normalisation, and content hashes per cell."""

    def __init__(self, cfg: SweepConfig):
        self.cfg = cfg
        self.layers = sorted({x for group in cfg.layers for x in group})
        self.info: dict[str, dict[str, Any]] = {}

    def pairs_path(self, b: Behaviour) -> Path:
        from caa_eval import data

        return b.pairs if b.pairs is not None else data.resolve_behaviour_pairs(b.name, "generate", self.cfg.caa_data_dir)

    def raw_path(self, b: Behaviour, site: str) -> Path:
        return self.cfg.vectors_folder / vector_file_name(b.name, site)

    def missing(self) -> list[tuple[Behaviour, str, list[int]]]:
        """(behaviour, site, layers to extract) for every file that is absent or lacks layers."""
        from caa_eval import data
        from caa_eval.core import vectors

        todo = []
        for b in self.cfg.behaviours:
            pairs_sha = data.file_sha256(self.pairs_path(b))
            for site in self.cfg.sites:
                path = self.raw_path(b, site)
                if not path.is_file():
                    todo.append((b, site, self.layers))
                    continue
                sv = vectors.load(path)
                if sv.site != site:
                    raise CAAEvalError(f"{path} was read at site {sv.site!r}, the sweep needs {site!r}; delete it or "
                                       "point vectors at another folder")
                if sv.dataset_sha256 and sv.dataset_sha256 != pairs_sha:
                    raise CAAEvalError(f"{path} was extracted from other contrast pairs than {self.pairs_path(b)}; delete it "
                                       "or point vectors at another folder")
                if sv.normalization:
                    raise CAAEvalError(f"{path} is already rescaled ({sv.normalization.get('method')}); the sweep needs "
                                       "raw vectors: point vectors at the raw files")
                lacking = [x for x in self.layers if x not in sv.vectors]
                if lacking:
                    todo.append((b, site, lacking))
        return todo

    def extract(self, todo: list[tuple[Behaviour, str, list[int]]], model: Any, tokenizer: Any,
                progress: bool) -> None:
        from caa_eval.core import vectors
        from caa_eval.core.extract import extract_to_file

        for b, site, layers in todo:
            path = self.raw_path(b, site)
            old = vectors.load(path) if path.is_file() else None
            log.info("extracting %s vectors (site %s, layers %s) from %s", b.name, site, layers, self.pairs_path(b))
            started = time.perf_counter()
            target = path if old is None else path.with_name(path.name + ".new.safetensors")
            sv = extract_to_file(self.cfg.model, self.pairs_path(b), target, layers=layers, site=site,
                                 batch_size=self.cfg.extract_batch_size, behaviour=b.name, model=model,
                                 tokenizer=tokenizer, progress=progress)
            if old is not None:  # keep the layers already there bit-identical, add the new ones
                merged = dataclasses.replace(sv, vectors={**old.vectors, **sv.vectors})
                merged.save(path)
                target.unlink(missing_ok=True)
            log.info("extracted %s (%s) in %.1f s", b.name, site, time.perf_counter() - started)

    def finalize(self) -> None:
        """Write the normalised copies (if asked) and record per-file facts for the manifest."""
        from caa_eval.core import vectors

        for site in self.cfg.sites:
            raw = [vectors.load(self.raw_path(b, site)) for b in self.cfg.behaviours]
            used = vectors.normalize_to_mean_norm(raw) if self.cfg.normalize else raw
            for b, sv in zip(self.cfg.behaviours, used):
                path = vector_path(self.cfg, b.name, site)
                if self.cfg.normalize:
                    existing = vectors.load(path) if path.is_file() else None
                    if existing is None or existing.sha256() != sv.sha256():
                        sv.save(path)
                self.info[f"{b.name}/{site}"] = {
                    "file": str(path), "raw_file": str(self.raw_path(b, site)), "sha256": sv.sha256(),
                    "layers": sv.layers, "n_pairs": sv.n_pairs, "dataset_sha256": sv.dataset_sha256,
                    "model_fingerprint": sv.model_fingerprint, "normalization": sv.normalization,
                    "norms": {str(x): round(float(sv.vectors[x].float().norm()), 6) for x in self.layers if x in sv.vectors},
                }

    def content_sha(self, cell: Cell) -> str | None:
        """Hash of exactly the numbers the cell adds (its layers' vectors): unchanged by extracting more layers."""
        if cell.vector is None:
            return None
        import torch

        from caa_eval.core import vectors

        sv = vectors.load(cell.vector)
        h = hashlib.sha256(f"{sv.site}".encode())
        for x in cell.layer or []:
            h.update(f"{x}:".encode())
            h.update(sv.vectors[x].detach().to(torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()


def cell_spec(cfg: SweepConfig, cell: Cell, vector_sha: str | None) -> dict[str, Any]:
    """Everything that determines a cell's numbers; a DONE cell with another spec is not silently reused."""
    cond = next(c for c in cfg.conditions if c.name == cell.condition)
    spec = {"model": cfg.model, "condition": dataclasses.asdict(cond), "tasks": cell.tasks, "limit": cfg.limit,
            "multiplier": cell.multiplier, "layer": cell.layer, "site": cell.site, "positions": cell.positions,
            "vector_sha256": vector_sha, "apply_chat_template": True}
    if cfg.gen_kwargs:
        spec["gen_kwargs"] = cfg.gen_kwargs
    if _open_tasks(cell):
        spec["judge"] = {"backend": cfg.judge.backend, "model": cfg.judge.model, "rubrics": cfg.judge.rubrics}
    return spec


def _cleanup(run_dir: Path) -> list[str]:
    """Remove half-built cells: everything in .partial/, and cells/ folders without DONE."""
    wiped = []
    partial = run_dir / ".partial"
    if partial.is_dir():
        for p in partial.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            wiped.append(p.name)
    cells = run_dir / "cells"
    if cells.is_dir():
        for p in cells.iterdir():
            if p.is_dir() and not (p / "DONE").exists():
                shutil.rmtree(p, ignore_errors=True)
                wiped.append(p.name)
    return wiped


def _primary_summary(results: dict[str, Any], tasks: Sequence[str]) -> str:
    parts = []
    table = results.get("results", {})
    for task in tasks:
        row = table.get(task, {})
        for metric in PRIMARY_METRICS:
            value = row.get(f"{metric},none")
            if isinstance(value, (int, float)):
                parts.append(f"{task} {metric}={value:.3f}")
                break
    return ", ".join(parts)


def _load_lm(cfg: SweepConfig, cond: Condition) -> Any:
    import torch

    from caa_eval.lmeval.model import SteeredHFLM

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs: dict[str, Any] = {"pretrained": cond.pretrained or cfg.model, "batch_size": cfg.batch_size,
                              "device": device, "multiplier": 0}
    if cond.peft:
        kwargs["peft"] = cond.peft
    if cfg.dtype:
        kwargs["dtype"] = cfg.dtype
    kwargs.update(cond.model_args)
    log.info("loading %s for condition %s", kwargs["pretrained"], cond.name)
    return SteeredHFLM(**kwargs)


@contextlib.contextmanager
def _env_info_once():
    """lm-eval adds torch's collect_env report to every results file; it spawns subprocesses (~1-2 s per
    call) and cannot change within one process, so compute it once per sweep and reuse it."""
    import lm_eval.evaluator as evaluator

    original = evaluator.add_env_info
    cached: dict[str, Any] = {}

    def add_env_info(storage: dict[str, Any]) -> None:
        if not cached:
            original(cached)
        storage.update(cached)

    evaluator.add_env_info = add_env_info
    try:
        yield
    finally:
        evaluator.add_env_info = original


def run_cell(lm: Any, cfg: SweepConfig, cell: Cell, cond: Condition, task_manager: Any, run_dir: Path,
             spec: dict[str, Any]) -> dict[str, Any]:
    """Run one cell into RUN_DIR/.partial/<id>/, move it to cells/<id>/, then write DONE. Returns lm-eval results."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    started, t0 = _now(), time.perf_counter()
    stage = run_dir / ".partial" / cell.id
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    if cell.is_baseline:
        lm.set_steering(vector=None, multiplier=0)
    else:
        lm.set_steering(vector=cell.vector, layers=cell.layer, multiplier=cell.multiplier, site=cell.site,
                        positions=cell.positions, allow_fingerprint_mismatch=cond.allow_mismatch)
    model_args: dict[str, Any] = {"pretrained": cond.pretrained or cfg.model}
    if cond.peft:
        model_args["peft"] = cond.peft
    model_args.update(cond.model_args)
    model_args.update({"vector": cell.vector, "layers": cell.layer, "multiplier": cell.multiplier, "site": cell.site,
                       "positions": cell.positions, "behaviour": cell.behaviour, "condition": cell.condition})
    model_args = {k: v for k, v in model_args.items() if v is not None}
    tracker = EvaluationTracker(output_path=str(stage / "results.json"))  # -> stage/results_<ts>.json, samples beside
    results = lm_eval.simple_evaluate(
        model=lm, model_args=model_args, tasks=list(cell.tasks), task_manager=task_manager, apply_chat_template=True,
        log_samples=True, limit=cfg.limit, batch_size=cfg.batch_size, evaluation_tracker=tracker,
        system_instruction=cond.system_instruction, gen_kwargs=dict(cfg.gen_kwargs) if cfg.gen_kwargs else None,
    )
    if results is None:
        raise CAAEvalError(f"cell {cell.id}: lm-eval returned no results (non-zero rank?)")
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task_name in results["configs"]:
        tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    # the tracker only logs write failures: check that every file is there before calling the cell done
    date_id = tracker.date_id
    expected = [stage / f"results_{date_id}.json"] + [stage / f"samples_{t}_{date_id}.jsonl" for t in results["configs"]]
    absent = [p.name for p in expected if not p.is_file()]
    if absent:
        raise CAAEvalError(f"cell {cell.id}: lm-eval did not write {', '.join(absent)} (disk full or not writable?)")
    judged = None
    open_files = sorted(p for t in _open_tasks(cell) for p in stage.glob(f"samples_{t}_{date_id}.jsonl"))
    if open_files:
        from caa_eval.judge import judge_samples

        js = cfg.judge
        kwargs: dict[str, Any] = {"backend": js.backend, "judge_model": js.model, "concurrency": js.concurrency,
                                  "batch_size": js.batch_size, "rubrics": js.rubrics, "base_url": js.base_url}
        if js.cache is False or js.cache is None:
            kwargs["cache_path"] = None  # no score cache
        elif isinstance(js.cache, str):
            kwargs["cache_path"] = js.cache  # else: the judge's default cache
        summary = judge_samples(open_files, **kwargs)
        judged = {t.task: {"mean": t.mean, "scored": t.scored, "n": t.n, "missing": t.missing} for t in summary.tasks}
    info = cell.cell_json() | {
        "cell_id": cell.id, "spec_sha256": _sha(spec), "spec": spec, "model": cond.pretrained or cfg.model,
        "peft": cond.peft, "system_instruction": cond.system_instruction, "limit": cfg.limit,
        "steering_config": lm.steering_config, "model_fingerprint": lm.model_fingerprint,
        "results_file": expected[0].name, "judged": judged, "started": started, "finished": _now(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_atomic(stage / "cell.json", _json(info))
    final = run_dir / "cells" / cell.id
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # a folder without DONE from an earlier crash
        shutil.rmtree(final)
    os.replace(stage, final)
    write_atomic(final / "DONE", _now() + "\n")
    return results


def _headline(report_md: Path) -> str:
    """The report's headline sentence and its behaviour/MMLU tables, for the terminal."""
    report = json.loads((report_md.parent / "report.json").read_text(encoding="utf-8"))
    from caa_eval.report import table_markdown

    n_sig = sum(1 for c in report["cells"] if c.get("significant"))
    lines = [f"{n_sig} of {report['correction']['n_tests']} steered cells differ significantly from multiplier 0 "
             f"(Holm, alpha={report['settings']['alpha']}); * = significant after Holm, † = after BH only"]
    for t in report["tables"]:
        lines += ["", t["title"], table_markdown(t)]
    return "\n".join(lines)


def run_sweep(cfg: SweepConfig, *, dry_run: bool = False, progress: bool = True,
              print_fn: Callable[[str], None] = print, after_cell: Callable[[Cell], None] | None = None) -> SweepResult:
    """Run (or, with dry_run, only plan) a sweep. Finished cells are skipped; see the module docstring."""
    t_start = time.perf_counter()
    run_dir = cfg.output
    cells = plan_cells(cfg)
    done = {c.id for c in cells if (run_dir / "cells" / c.id / "DONE").exists()}
    conds = {c.name: c for c in cfg.conditions}
    if dry_run:
        with tempfile.TemporaryDirectory() as tmp:
            write_custom_tasks(cfg, Path(tmp))
            check_tasks(cfg, _task_manager(cfg, Path(tmp)))
        store = _VectorStore(cfg)
        todo = store.missing()
        print_fn(f"sweep {cfg.source} -> {run_dir}")
        print_fn(f"model {cfg.model}; conditions {', '.join(conds)}; {len(cells)} cells "
                 f"({len(done)} done, {len(cells) - len(done)} to run); limit {cfg.limit}")
        for b, site, layers in todo:
            print_fn(f"  extract {b.name} (site {site}) layers {layers} -> {store.raw_path(b, site)}")
        for c in cells:
            print_fn(f"  [{'done' if c.id in done else 'todo'}] {c.id}: {', '.join(c.tasks)}")
        return SweepResult(run_dir, cells, [], sorted(done), None, time.perf_counter() - t_start)

    run_dir.mkdir(parents=True, exist_ok=True)
    with _Lock(run_dir):
        wiped = _cleanup(run_dir)
        if wiped:
            log.warning("removed %d unfinished cell folder(s) from an interrupted run: %s", len(wiped), ", ".join(wiped[:5]))
        write_custom_tasks(cfg, run_dir / "tasks")
        task_manager = _task_manager(cfg, run_dir / "tasks")
        check_tasks(cfg, task_manager)

        manifest_path = run_dir / "manifest.json"
        manifest: dict[str, Any] = {}
        if manifest_path.is_file():
            with contextlib.suppress(OSError, ValueError):
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        this_run = {"started": _now(), "ended": None, "status": "running", "pid": os.getpid(),
                    "host": socket.gethostname(), "argv": sys.argv, "config_sha256": _sha(cfg.to_dict()),
                    "cells_run": [], "cells_skipped": sorted(done)}
        manifest.update({"format": FORMAT, "config": cfg.to_dict(), "config_file": cfg.source,
                         "versions": _versions(), "platform": platform.platform(),
                         "started": manifest.get("started") or this_run["started"], "ended": None})
        manifest.setdefault("models", {})
        for old_run in manifest.get("runs", []):
            if old_run.get("status") == "running":  # we hold the lock: that process died without cleaning up
                old_run["status"] = "killed"
        manifest["runs"] = list(manifest.get("runs", [])) + [this_run]

        def save_manifest() -> None:
            manifest["cells"] = [{"id": c.id, "condition": c.condition, "behaviour": c.behaviour, "layer": c.layer,
                                  "site": c.site, "positions": c.positions, "multiplier": c.multiplier, "tasks": c.tasks,
                                  "done": (run_dir / "cells" / c.id / "DONE").exists()} for c in cells]
            write_atomic(manifest_path, _json(manifest))

        save_manifest()
        lms: dict[str, Any] = {}
        bar = None
        stack = contextlib.ExitStack()
        try:
            store = _VectorStore(cfg)
            todo = store.missing()
            base_cond = next((c for c in cfg.conditions if c.model_key(cfg.model) == Condition().model_key(cfg.model)), None)
            if todo:
                if base_cond is not None:
                    lm = lms.setdefault(base_cond.model_key(cfg.model), _load_lm(cfg, base_cond))
                    store.extract(todo, lm.model, lm.tokenizer, progress)
                else:
                    from caa_eval.core.extract import load_model

                    model, tok = load_model(cfg.model)
                    store.extract(todo, model, tok, progress)
                    del model, tok
                    gc.collect()
            store.finalize()
            manifest["vectors"] = store.info
            specs = {c.id: cell_spec(cfg, c, store.content_sha(c)) for c in cells}
            for c in cells:
                if c.id in done:
                    old = json.loads((run_dir / "cells" / c.id / "cell.json").read_text(encoding="utf-8"))
                    if old.get("spec_sha256") != _sha(specs[c.id]):
                        changed = sorted(k for k in specs[c.id] if (old.get("spec") or {}).get(k) != specs[c.id][k])
                        raise CAAEvalError(
                            f"{run_dir}/cells/{c.id} was computed with a different setting ({', '.join(changed) or 'spec'}); "
                            "use a new output folder (--out), or delete that cell folder to recompute it")
            pending = [c for c in cells if c.id not in done]
            save_manifest()

            from tqdm.auto import tqdm

            bar = tqdm(total=len(cells), initial=len(done), desc="sweep", unit="cell", disable=not progress,
                       dynamic_ncols=True, file=sys.stderr)
            stack.enter_context(_env_info_once())
            order = sorted(cfg.conditions, key=lambda c: c.model_key(cfg.model) not in lms)  # loaded model first
            for key in dict.fromkeys(c.model_key(cfg.model) for c in order):
                group = [c for c in pending if conds[c.condition].model_key(cfg.model) == key]
                if not group:
                    continue
                for other in [k for k in lms if k != key]:  # one model in memory at a time
                    del lms[other]
                    gc.collect()
                if key not in lms:
                    lms[key] = _load_lm(cfg, conds[group[0].condition])
                lm = lms[key]
                for name in {c.condition for c in group}:
                    manifest["models"][name] = {"pretrained": conds[name].pretrained or cfg.model, "peft": conds[name].peft,
                                                "fingerprint": lm.model_fingerprint}
                if key == Condition().model_key(cfg.model):
                    manifest["model_fingerprint"] = lm.model_fingerprint
                save_manifest()
                for cell in group:
                    bar.set_postfix_str(cell.id, refresh=True)
                    res = run_cell(lm, cfg, cell, conds[cell.condition], task_manager, run_dir, specs[cell.id])
                    this_run["cells_run"].append(cell.id)
                    bar.write(f"done {cell.id}: {_primary_summary(res, cell.tasks)}")
                    bar.update(1)
                    save_manifest()
                    if after_cell is not None:
                        after_cell(cell)
            bar.close()
            lms.clear()
            with contextlib.suppress(OSError):
                (run_dir / ".partial").rmdir()  # only when empty
            this_run["status"] = "complete"
        except KeyboardInterrupt:
            this_run["status"] = "interrupted"
            raise
        except BaseException as exc:
            this_run["status"] = "failed"
            this_run["error"] = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            stack.close()
            if bar is not None:
                bar.close()
            this_run["ended"] = _now()
            manifest["ended"] = this_run["ended"]
            with contextlib.suppress(Exception):
                save_manifest()

    report_md = None
    if cfg.report and not any(not c.is_baseline for c in cells):
        print_fn("no steered cells (all multipliers are 0): nothing to test, no report")
    elif cfg.report:
        from caa_eval.report import build_report

        report_md = build_report(run_dir, run_dir / "report")
        print_fn(f"report: {report_md}")
        print_fn(_headline(report_md))
    seconds = time.perf_counter() - t_start
    print_fn(f"sweep finished in {seconds / 60:.1f} min: {len(this_run['cells_run'])} cell(s) run, "
             f"{len(done)} already done; run folder {run_dir}")
    return SweepResult(run_dir, cells, list(this_run["cells_run"]), sorted(done), report_md, seconds)


# ---------------------------------------------------------------------------------------------------- CLI


def _split(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for raw in values for v in raw.split(",") if v.strip()]


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="sweep YAML (see examples/sweep_smollm2.yaml and docs/sweeps.md)")
    parser.add_argument("--out", default=None, help="run folder (overrides `output`)")
    parser.add_argument("--model", default=None, help="HF path/ID or smollm2-135m-instruct (overrides `model`)")
    parser.add_argument("--limit", default=None, help="items per task (MMLU: per subject), or a fraction < 1")
    parser.add_argument("--layers", nargs="+", default=None, help="e.g. 13 | 10,13,16 | 10-14 (overrides `layers`)")
    parser.add_argument("--multipliers", nargs="+", default=None,
                        help="e.g. --multipliers -1 0 1 or --multipliers=-1,0,1 (0 is always added)")
    parser.add_argument("--behaviours", "--behaviors", nargs="+", default=None, help="CAA behaviour names (overrides `behaviours`)")
    parser.add_argument("--tasks", nargs="+", default=None, help="task names/templates, e.g. caa_ab_{behaviour},caa_mmlu_2opt")
    parser.add_argument("--sites", nargs="+", default=None, help="residual,mlp,attn (overrides `sites`)")
    parser.add_argument("--batch-size", default=None, help="lm-eval batch size (overrides `batch_size`)")
    parser.add_argument("--no-report", action="store_true", help="do not build RUN_DIR/report at the end")
    parser.add_argument("--dry-run", action="store_true", help="print the cells (done / to run) and the vectors to extract")


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    layers = _split(args.layers)
    over: dict[str, Any] = {
        "output": args.out, "limit": args.limit, "model": getattr(args, "model", None),
        "layers": layers, "multipliers": _split(args.multipliers), "behaviours": _split(args.behaviours),
        "tasks": _split(args.tasks), "sites": _split(getattr(args, "sites", None)),
    }
    if getattr(args, "batch_size", None) is not None:
        bs = args.batch_size
        over["batch_size"] = int(bs) if str(bs).isdigit() else bs
    if getattr(args, "no_report", False):
        over["report"] = False
    return over


def run_cli(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, cli_overrides(args))
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        for name in ("lm_eval", "lm-eval", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    run_sweep(cfg, dry_run=args.dry_run, progress=True)
    return 0
