"""Checks of single sweep-config values (layers, multipliers, limit, sites, positions, device, batch size,
tasks, cross_tasks, gen_kwargs, vector_layer).

Every check raises a one-line `CAAEvalError` of the form `<file>: key '<key>': <problem>; <fix>`, so a bad
config stops the sweep before any model is loaded. The shared spellings come from `caa_eval.vocab`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from caa_eval import vocab
from caa_eval.core.positions import Positions
from caa_eval.errors import CAAEvalError

__all__ = [
    "DEVICES",
    "config_error",
    "parse_finetune",
    "as_list",
    "config_path",
    "parse_layer_groups",
    "parse_multipliers",
    "parse_limit",
    "parse_sites",
    "parse_positions",
    "parse_device",
    "parse_batch_size",
    "parse_bool",
    "parse_tasks",
    "parse_cross_tasks",
    "parse_gen_kwargs",
    "parse_vector_layer",
    "parse_task_metadata",
]

DEVICES = ("cpu", "cuda", "cuda:N", "mps", "auto")
_DEVICE_RE = re.compile(r"^(?:cpu|cuda|cuda:\d+|mps|auto)$")


def config_error(source: str, key: str, problem: str, fix: str) -> CAAEvalError:
    """The one error shape of the sweep config: file, key, what is wrong, what to write instead."""
    return CAAEvalError(f"{source}: key '{key}': {problem}; {fix}")


def as_list(value: Any) -> list[Any]:
    """None -> [], `"a, b"` -> ["a", "b"], a scalar -> [it], a list as is (YAML and CLI flags both land here)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def config_path(value: Any, base: Path, source: str, key: str) -> Path:
    """A path from the config; relative ones are relative to the config file's folder `base`."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise config_error(source, key, f"expected a path, got {value!r}", "write a file or folder path")
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else base / p


def parse_layer_groups(value: Any, source: str) -> list[list[int]]:
    """Layers as groups: each group is steered at once in one cell.

    Args:
        value: `13`, `"10-14"` (one group per layer), `[10, 13]`, or nested `[[10, 12]]` (one joint group).
        source: the config's name for messages.
    """
    fix = "use e.g. layers: [13], [10, 13, 16], '10-14', or [[10, 12]] to steer two layers at once"
    if value is None:
        raise config_error(source, "layers", "missing", fix)
    items = [value] if isinstance(value, (int, str)) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise config_error(source, "layers", f"{value!r} is not a non-empty list", fix)
    out: list[list[int]] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str, list, tuple)):
            raise config_error(source, "layers", f"{item!r} is not a layer", fix)
        try:
            parsed = vocab.parse_layers(item)
        except CAAEvalError:
            raise config_error(source, "layers", f"{item!r} is not a layer", fix) from None
        if parsed is None:  # `all`: the model's depth is not known before it is loaded
            raise config_error(source, "layers", "'all' needs the model's depth", "list the layers, e.g. '0-23'")
        if isinstance(item, str):
            out.extend([x] for x in parsed)  # "10-14": five cells, one layer each
        else:
            out.append(parsed)
    bad = [x for group in out for x in group if x < 0]
    if bad:
        raise config_error(source, "layers", f"negative layer {bad[0]}", "layers count from 0")
    unique: list[list[int]] = []
    for group in out:
        if group not in unique:
            unique.append(group)
    return unique


def parse_multipliers(value: Any, source: str) -> list[float]:
    """Sorted, unique, finite multipliers; 0 (the baseline) is always added."""
    fix = "use e.g. multipliers: [-1, 0, 1]"
    items = as_list(value)
    if not items:
        raise config_error(source, "multipliers", "missing or empty", fix)
    out = []
    for item in items:
        try:
            if isinstance(item, bool):
                raise CAAEvalError("a boolean")
            m = vocab.parse_multiplier(item)
        except CAAEvalError as exc:
            problem = "is not finite" if "finite" in str(exc) else "is not a number"
            raise config_error(source, "multipliers", f"{item!r} {problem}", fix) from None
        out.append(m + 0.0)  # -0.0 -> 0.0
    return sorted(set(out) | {0.0})


def parse_limit(value: Any, source: str) -> int | float | None:
    """Items per task: a whole count >= 1, or a fraction in (0, 1); None = all."""
    if value is None:
        return None
    fix = "use a count such as 20, or a fraction such as 0.5"
    try:
        if isinstance(value, bool):
            raise ValueError
        limit = float(value)
    except (TypeError, ValueError):
        raise config_error(source, "limit", f"{value!r} is not a number", fix) from None
    if not limit > 0 or limit == float("inf"):
        raise config_error(source, "limit", f"{value!r} must be positive", fix)
    if limit >= 1:
        if not limit.is_integer():
            raise config_error(
                source, "limit", f"{value!r} is neither a whole count nor a fraction below 1", "use e.g. 20 or 0.5"
            )
        return int(limit)
    return limit


def parse_sites(value: Any, source: str) -> list[str]:
    """Unique sites, each one of `vocab.SITES`."""
    sites = [str(s) for s in as_list(value)]
    if not sites:
        raise config_error(source, "sites", "the list is empty", f"use a list of {', '.join(vocab.SITES)}")
    for s in sites:
        try:
            vocab.parse_site(s)
        except CAAEvalError as exc:
            raise config_error(source, "sites", str(exc), "use a list of those") from None
    return list(dict.fromkeys(sites))


def parse_positions(value: Any, source: str) -> list[str]:
    """Unique position rules in their canonical spelling (`Positions.parse`)."""
    items = [str(p) for p in (value if isinstance(value, list) else [value])]
    if not items:
        raise config_error(source, "positions", "empty list", "use e.g. positions: [after_instruction]")
    out = []
    for p in items:
        try:
            out.append(str(Positions.parse(p)))
        except CAAEvalError as exc:
            raise config_error(source, "positions", str(exc), "see docs/sweeps.md") from None
    return list(dict.fromkeys(out))


def parse_device(value: Any, source: str) -> str | None:
    """`cpu`, `cuda`, `cuda:N`, `mps`; None for `auto`/unset. Anything else is refused: lm-eval would
    quietly fall back to the CPU on a device name it does not know."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if isinstance(value, bool) or not _DEVICE_RE.match(text):
        raise config_error(source, "device", f"{value!r} is not a device", f"write one of {', '.join(DEVICES)}")
    return None if text == "auto" else text


def parse_batch_size(value: Any, source: str) -> int | str:
    """lm-eval's batch size: a positive integer or `auto` (`auto:N`)."""
    if (isinstance(value, int) and not isinstance(value, bool) and value >= 1) or (
        isinstance(value, str) and value.startswith("auto")
    ):
        return value
    raise config_error(
        source, "batch_size", f"{value!r} is not a positive integer or 'auto'", "write e.g. batch_size: 16"
    )


def parse_bool(value: Any, source: str, key: str) -> bool:
    """A YAML true/false (strings such as 'yes' are refused: they are too easy to misread)."""
    if not isinstance(value, bool):
        raise config_error(source, key, f"{value!r} is not true/false", f"write {key}: true or false")
    return value


def parse_finetune(value: Any, source: str, name: str) -> dict[str, Any]:
    """Check a condition's `finetune` mapping (the `caa-eval finetune` settings) and return it.

    Args:
        value: the mapping from the config, e.g. `{direction: pos, max_steps: 20}`.
        source: the config's name in error messages.
        name: the condition's name.
    """
    from caa_eval.finetune.recipe import FinetuneConfig

    if not isinstance(value, dict) or "direction" not in value:
        raise config_error(
            source,
            "conditions",
            f"{name}: finetune must be a mapping with a direction",
            "write finetune: {direction: pos} (or neg; optional lr, epochs, max_steps, lora_r, ...)",
        )
    try:
        FinetuneConfig.from_mapping(dict(value), f"condition {name}")
    except CAAEvalError as exc:
        raise config_error(source, "conditions", str(exc), "see docs/finetuning.md for the settings") from None
    return dict(value)


def parse_tasks(value: Any, behaviours: Sequence[Any], source: str) -> list[str]:
    """The `tasks` templates; each (and each behaviour's own list) may use only `{behaviour}`.

    Args:
        value: the `tasks` key.
        behaviours: the parsed behaviours (their own `tasks` are checked too).
        source: the config's name in error messages.
    """
    tasks = [str(t) for t in as_list(value)]
    if not tasks:
        raise config_error(source, "tasks", "empty list", "use e.g. tasks: [caa_ab_{behaviour}, caa_mmlu_2opt]")
    for b in behaviours:
        for t in b.tasks or tasks:
            try:
                t.format(behaviour="x")
            except (KeyError, IndexError, ValueError):
                raise config_error(
                    source,
                    "tasks",
                    f"template {t!r} is not valid",
                    "the only placeholder is {behaviour}, e.g. caa_ab_{behaviour}",
                ) from None
    return tasks


def parse_cross_tasks(value: Any, behaviours: Sequence[Any], source: str) -> list[str]:
    """`cross_tasks: true` -> each CAA behaviour's (or custom ab_test's) A/B task and the installed capability
    tasks; every vector then runs these and every behaviour's own tasks (one shared-prefix pass per task).

    Args:
        value: the `cross_tasks` key (true/false).
        behaviours: the parsed behaviours.
        source: the config's name in error messages.
    """
    if not parse_bool(value, source, "cross_tasks"):
        return []
    from caa_eval.data.catalog import shipped_task_names

    runs = [b for b in behaviours if b.tasks != []]  # a vector-only behaviour (`tasks: []`) adds no task
    ab = [vocab.ab_task_name(b.name) for b in runs if not b.custom or b.ab_test is not None]
    installed = shipped_task_names()
    return ab + [t for t in vocab.CAPABILITY_TASKS if t in installed]


def parse_gen_kwargs(value: Any, source: str) -> dict[str, Any] | None:
    """Generation overrides for open-ended tasks: a non-empty mapping, or None."""
    if value is not None and (not isinstance(value, dict) or not value):
        raise config_error(
            source, "gen_kwargs", f"{value!r} is not a mapping", "write e.g. gen_kwargs: {max_gen_toks: 50}"
        )
    return value


def parse_vector_layer(value: Any, source: str) -> int | None:
    """The one layer whose vector every cell adds (layer transfer), or None for each layer's own."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise config_error(source, "vector_layer", f"{value!r} is not one layer index", "write e.g. vector_layer: 13")
    return value


def parse_task_metadata(value: Any, source: str) -> dict[str, Any]:
    """Metadata handed to the tasks (lm-eval's `metadata`), e.g. `{tqa_seed: caa}`; a mapping or nothing."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise config_error(
            source, "task_metadata", f"{value!r} is not a mapping", "write e.g. task_metadata: {tqa_seed: caa}"
        )
    return dict(value)
