"""The sweep config: one YAML file says what to sweep (docs/sweeps.md); it is fully checked before any
model is loaded, and every mistake is reported as one line naming the key and what to write instead.

CAA fidelity: CAA steers with vectors rescaled, per layer, to the mean norm across its behaviours, and its
multipliers are on that scale. So `normalize` defaults to true when the sweep has two or more of CAA's
behaviours; `normalize: false` opts out. Which one applied (and whether by default) is kept in the config.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caa_eval import vocab
from caa_eval.errors import CAAEvalError
from caa_eval.sweep.entries import (
    DEFAULT_CONDITION,
    Behaviour,
    Condition,
    check_system_prompts,
    parse_behaviours,
    parse_conditions,
)
from caa_eval.sweep.validate import (
    as_list,
    config_error,
    config_path,
    parse_batch_size,
    parse_bool,
    parse_cross_tasks,
    parse_device,
    parse_gen_kwargs,
    parse_layer_groups,
    parse_limit,
    parse_multipliers,
    parse_positions,
    parse_sites,
    parse_task_metadata,
    parse_tasks,
    parse_vector_layer,
)

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_TASKS",
    "DEFAULT_CONDITION",
    "JUDGE_BACKENDS",
    "Behaviour",
    "Condition",
    "JudgeSettings",
    "SweepConfig",
    "caa_behaviours",
    "normalize_warning",
    "config_from_dict",
    "load_config",
]

DEFAULT_TASKS = ("caa_ab_{behaviour}", "caa_mmlu_2opt")
JUDGE_BACKENDS = ("hf", "openai")

CONFIG_KEYS = {
    "model": "HF path/ID or the alias smollm2-135m-instruct",
    "behaviours": "list of CAA behaviour names, or entries {name, pairs: FILE, ab_test: FILE, open_test: FILE, tasks: [...]}",
    "vectors": "folder of vector files <behaviour>.safetensors (extracted if missing), or {dir, normalize, batch_size}",
    "normalize": "CAA's per-layer mean-norm rescaling across the sweep's behaviours "
    "(default: true with >= 2 CAA behaviours, else false)",
    "layers": "list of layers, e.g. [13] or [10, 13, 16]; a nested list [10, 12] steers both at once; or '10-14'",
    "vector_layer": "apply this layer's vector at every swept layer (CAA's layer transfer, §8.2); default: each layer's own",
    "multipliers": "list of numbers, e.g. [-1, 0, 1] (0, the baseline, is always added)",
    "sites": f"list of {' | '.join(vocab.SITES)}",
    "positions": "list of after_instruction | all | generated | span:START:END | regex:PATTERN",
    "tasks": "task names or templates per behaviour, e.g. [caa_ab_{behaviour}, caa_mmlu_2opt, caa_open_{behaviour}]",
    "conditions": "list of {name, pretrained, peft, model_args, system_instruction, system_prompt: pos|neg|TEXT, "
    "allow_fingerprint_mismatch, finetune: {direction: pos|neg, ...}}",
    "limit": "items per task (MMLU: per subject); a number >= 1, or a fraction < 1",
    "batch_size": "lm-eval batch size (a number or 'auto')",
    "device": "cpu | cuda | cuda:N | mps | auto (default auto: cuda if available, else cpu)",
    "dtype": "model dtype for lm-eval (default auto)",
    "judge": "{backend: hf|openai, model, concurrency, batch_size, rubrics, base_url, cache}",
    "gen_kwargs": "generation overrides for open-ended tasks, e.g. {max_gen_toks: 50}",
    "output": "run folder (default outputs/<config file stem>)",
    "include_path": "extra lm-eval task folder(s) with your own task YAMLs",
    "include_default_tasks": "true = also index lm-eval's built-in tasks (slower start)",
    "task_metadata": "mapping passed to the tasks as lm-eval metadata, e.g. {tqa_seed: caa} (CAA's TruthfulQA letters)",
    "caa_data_dir": "CAA datasets/ folder (default $CAA_EVAL_DATA_DIR, then the download cache)",
    "mmlu_dir": "folder of MMLU test CSVs (default $CAA_EVAL_MMLU_DIR, then the download cache)",
    "report": "true (default) = build RUN_DIR/report at the end",
    "cross_tasks": "true = every vector also runs every other task of the sweep, each CAA behaviour's A/B task and "
    "the capability tasks (caa_mmlu_2opt, caa_tqa_2opt): the report's entanglement matrix",
}
_ALIASES = {
    "behaviors": "behaviours",
    "out": "output",
    "output_dir": "output",
    "condition": "conditions",
    "normalise": "normalize",
}


@dataclass
class JudgeSettings:
    """How open-ended cells are scored (caa_eval.judge.judge_samples arguments)."""

    backend: str = "hf"
    model: str | None = None
    concurrency: int = 8
    batch_size: int = 8
    rubrics: str | None = None
    base_url: str | None = None
    cache: str | bool | None = True  # True: judge's default cache; False: none; str: this file


@dataclass
class SweepConfig:
    """A checked sweep: everything `plan_cells` and `run_sweep` need."""

    model: str
    behaviours: list[Behaviour]
    layers: list[list[int]]
    multipliers: list[float]
    vector_layer: int | None = None  # the layer whose vector every cell adds (layer transfer); None = its own
    sites: list[str] = field(default_factory=lambda: ["residual"])
    positions: list[str] = field(default_factory=lambda: ["after_instruction"])
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    conditions: list[Condition] = field(default_factory=lambda: [Condition()])
    vectors_dir: Path | None = None  # None: RUN_DIR/vectors
    normalize: bool = False  # the vectors the cells add are CAA's mean-norm rescaled ones
    normalize_by_default: bool = False  # True: `normalize` was not written, the default decided
    extract_batch_size: int = 16
    limit: int | float | None = None
    batch_size: int | str = 16
    device: str | None = None  # None: auto
    dtype: str | None = None
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    gen_kwargs: dict[str, Any] | None = None
    output: Path = Path("outputs/sweep")
    include_path: list[Path] = field(default_factory=list)
    include_default_tasks: bool = False
    task_metadata: dict[str, Any] = field(default_factory=dict)  # lm-eval task metadata, e.g. {tqa_seed: caa}
    caa_data_dir: Path | None = None
    mmlu_dir: Path | None = None
    report: bool = True
    cross_tasks: list[str] = field(default_factory=list)  # `cross_tasks: true`, resolved: tasks every vector runs
    source: str = "<dict>"  # where the config came from, for messages

    @property
    def vectors_folder(self) -> Path:
        """Where the raw (extracted) vector files live."""
        return self.vectors_dir if self.vectors_dir is not None else self.output / "vectors"

    def _own_tasks(self, b: Behaviour) -> list[str]:
        return list(
            dict.fromkeys(t.format(behaviour=b.task_name) for t in (b.tasks if b.tasks is not None else self.tasks))
        )

    def behaviour_tasks(self, b: Behaviour) -> list[str]:
        """The tasks the behaviour's vector runs, `{behaviour}` filled in; with cross_tasks: every task (none for a
        vector-only behaviour, `tasks: []`)."""
        own = self._own_tasks(b)
        return self.all_tasks() if self.cross_tasks and own else own

    def all_tasks(self) -> list[str]:
        """Every task of the sweep, in config order: the behaviours' own lists, then the cross tasks."""
        return list(dict.fromkeys([t for b in self.behaviours for t in self._own_tasks(b)] + self.cross_tasks))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the manifest (paths as strings, the resolved vectors folder)."""

        def clean(v: Any) -> Any:
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
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


def caa_behaviours(behaviours: list[Behaviour]) -> list[str]:
    """The behaviours whose vectors come from CAA's own data: the ones CAA normalises across."""
    return [b.name for b in behaviours if not b.custom and b.name in vocab.BEHAVIOURS]


def normalize_warning(cfg: SweepConfig) -> str | None:
    """One line when CAA's normalisation cannot apply: a single CAA behaviour and no explicit choice."""
    caa = caa_behaviours(cfg.behaviours)
    if cfg.normalize or not cfg.normalize_by_default or len(caa) != 1:
        return None
    return (
        f"only one CAA behaviour ({caa[0]}): CAA normalises vectors across behaviours, which needs at least "
        "two, so the raw vector is used and multipliers are on the raw scale, not CAA's"
    )


def _parse_judge(value: Any, source: str, base: Path) -> JudgeSettings:
    if value is None:
        return JudgeSettings()
    if not isinstance(value, dict):
        raise config_error(
            source, "judge", f"{value!r} is not a mapping", "write judge: {backend: hf, model: smollm2-135m-instruct}"
        )
    allowed = {f.name for f in dataclasses.fields(JudgeSettings)}
    unknown = set(value) - allowed
    if unknown:
        raise config_error(
            source, "judge", f"unknown field(s) {sorted(unknown)}", f"allowed: {', '.join(sorted(allowed))}"
        )
    js = JudgeSettings(**value)
    if js.backend not in JUDGE_BACKENDS:
        raise config_error(source, "judge.backend", f"{js.backend!r} unknown", f"choose {' or '.join(JUDGE_BACKENDS)}")
    for key in ("concurrency", "batch_size"):
        n = getattr(js, key)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise config_error(source, f"judge.{key}", f"{n!r} is not a positive integer", f"write e.g. {key}: 8")
    if js.rubrics:
        js.rubrics = str(config_path(js.rubrics, base, source, "judge.rubrics"))
    if isinstance(js.cache, str):
        js.cache = str(config_path(js.cache, base, source, "judge.cache"))
    return js


def _parse_vectors(cfg_in: dict[str, Any], source: str, base: Path) -> tuple[Path | None, bool | None, int]:
    """`vectors` (a folder or {dir, normalize, batch_size}) and `normalize` -> (folder, normalize or None, batch)."""
    vectors, normalize, extract_bs = cfg_in.get("vectors"), cfg_in.get("normalize"), 16
    if isinstance(vectors, dict):
        unknown = set(vectors) - {"dir", "normalize", "batch_size"}
        if unknown:
            raise config_error(
                source, "vectors", f"unknown field(s) {sorted(unknown)}", "allowed: dir, normalize, batch_size"
            )
        if vectors.get("normalize") is not None:
            normalize = vectors["normalize"]
        extract_bs = vectors.get("batch_size", 16)
        vectors = vectors.get("dir")
    if normalize is not None:
        parse_bool(normalize, source, "normalize")
    if not isinstance(extract_bs, int) or isinstance(extract_bs, bool) or extract_bs < 1:
        raise config_error(
            source, "vectors.batch_size", f"{extract_bs!r} is not a positive integer", "write e.g. batch_size: 16"
        )
    folder = config_path(vectors, base, source, "vectors") if vectors is not None else None
    return folder, normalize, extract_bs


def _known_keys(raw: Any, source: str) -> dict[str, Any]:
    """The config's keys with aliases resolved; an unknown key is refused with the closest known one."""
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
    return cfg_in


def _parse_model(value: Any, source: str, base: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise config_error(source, "model", "missing", "write model: smollm2-135m-instruct (or an HF path/ID)")
    model = str(base / value) if (base / value).exists() and not Path(value).is_absolute() else value
    return model.strip()


def _parse_normalize(normalize: bool | None, behaviours: list[Behaviour], source: str) -> tuple[bool, bool]:
    """(normalize, decided by default): CAA's rescaling is the default with two or more CAA behaviours."""
    if normalize is None:
        return len(caa_behaviours(behaviours)) >= 2, True
    if normalize and len(behaviours) < 2:
        raise config_error(
            source,
            "normalize",
            "mean-norm rescaling needs at least two behaviours",
            "add behaviours or set normalize: false",
        )
    return bool(normalize), False


def _parse_paths(cfg_in: dict[str, Any], source: str, base: Path, default_output: Path | None) -> dict[str, Any]:
    """output, include_path, caa_data_dir and mmlu_dir, relative to `base`."""
    include_path = [config_path(p, base, source, "include_path") for p in as_list(cfg_in.get("include_path"))]
    for p in include_path:
        if not p.is_dir():
            raise config_error(source, "include_path", f"{p} is not a folder", "give folders holding task YAMLs")
    output = cfg_in.get("output")
    out_dir = (
        config_path(output, base, source, "output") if output is not None else (default_output or Path("outputs/sweep"))
    )
    folders = {
        key: config_path(cfg_in[key], base, source, key) if cfg_in.get(key) else None
        for key in ("caa_data_dir", "mmlu_dir")
    }
    return {"output": out_dir, "include_path": include_path, **folders}


def config_from_dict(
    raw: dict[str, Any], source: str = "<dict>", base: Path | None = None, default_output: Path | None = None
) -> SweepConfig:
    """Check a config mapping and build the `SweepConfig`.

    Args:
        raw: the keys of docs/sweeps.md (aliases such as `behaviors` and `out` are accepted).
        source: the config's name in error messages.
        base: folder that relative paths are relative to (default: the working directory).
        default_output: run folder when `output` is not given.
    """
    base = base or Path.cwd()
    cfg_in = _known_keys(raw, source)
    model = _parse_model(cfg_in.get("model"), source, base)
    vectors_dir, normalize, extract_bs = _parse_vectors(cfg_in, source, base)
    behaviours = parse_behaviours(cfg_in.get("behaviours"), source, base)
    normalize, by_default = _parse_normalize(normalize, behaviours, source)
    conditions = parse_conditions(cfg_in.get("conditions"), source, base)
    check_system_prompts(conditions, behaviours, source)
    return SweepConfig(
        model=model,
        behaviours=behaviours,
        layers=parse_layer_groups(cfg_in.get("layers"), source),
        multipliers=parse_multipliers(cfg_in.get("multipliers"), source),
        vector_layer=parse_vector_layer(cfg_in.get("vector_layer"), source),
        sites=parse_sites(cfg_in.get("sites", ["residual"]), source),
        positions=parse_positions(cfg_in.get("positions", ["after_instruction"]), source),
        tasks=parse_tasks(cfg_in.get("tasks", list(DEFAULT_TASKS)), behaviours, source),
        conditions=conditions,
        vectors_dir=vectors_dir,
        normalize=normalize,
        normalize_by_default=by_default,
        extract_batch_size=extract_bs,
        limit=parse_limit(cfg_in.get("limit"), source),
        batch_size=parse_batch_size(cfg_in.get("batch_size", 16), source),
        device=parse_device(cfg_in.get("device"), source),
        dtype=cfg_in.get("dtype"),
        judge=_parse_judge(cfg_in.get("judge"), source, base),
        gen_kwargs=parse_gen_kwargs(cfg_in.get("gen_kwargs"), source),
        task_metadata=parse_task_metadata(cfg_in.get("task_metadata"), source),
        include_default_tasks=parse_bool(cfg_in.get("include_default_tasks", False), source, "include_default_tasks"),
        report=parse_bool(cfg_in.get("report", True), source, "report"),
        cross_tasks=parse_cross_tasks(cfg_in.get("cross_tasks", False), behaviours, source),
        source=source,
        **_parse_paths(cfg_in, source, base, default_output),
    )


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read a YAML sweep config and apply overrides.

    Args:
        path: the YAML file; relative paths inside it are relative to its folder.
        overrides: key -> value from CLI flags (None = not given); `output` and a local `model` path are
            taken relative to the working directory.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CAAEvalError(f"sweep config {path} not found; write a YAML file (see examples/sweep_smollm2.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise CAAEvalError(
            f"{path}:{line} is not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax"
        ) from None
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
            p = Path(value).expanduser()
            value = str(p if p.is_absolute() else cwd / p)
        raw = {k: v for k, v in raw.items() if _ALIASES.get(k, k) != key}
        raw[key] = value
    return config_from_dict(
        raw, source=str(path), base=path.resolve().parent, default_output=Path("outputs") / path.stem
    )
