"""The shared vocabulary of caa-eval: one copy of each name every pipeline step agrees on.

Sites, position rules, layer specs, multiplier spelling, CAA's behaviours and how lm-eval task names and
output file names map onto them. Nothing here imports torch or lm-eval, so every step can use it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

from caa_eval.errors import CAAEvalError

__all__ = [
    "SITES",
    "FINETUNE_DIR",
    "HOOK_NAMES",
    "POSITION_MODES",
    "BEHAVIOURS",
    "TASK_FAMILIES",
    "JUDGE_METRIC",
    "CAPABILITY_TASKS",
    "PROBABILITY_METRICS",
    "parse_layers",
    "parse_site",
    "format_multiplier",
    "parse_multiplier",
    "behaviour_key",
    "caa_behaviour",
    "task_suffix",
    "ab_task_name",
    "open_task_name",
    "task_family",
    "primary_metric",
    "behaviour_of_task",
    "samples_task",
    "judged_task",
    "SAMPLES_RE",
    "JUDGED_RE",
    "RESULTS_RE",
    "CAA_VECTOR_RE",
]

# ----------------------------------------------------------------------------------------- where CAA acts

SITES = ("residual", "mlp", "attn")
"""residual: decoder block output (what CAA reads and steers); mlp / attn: that sublayer's output."""

HOOK_NAMES = {
    "residual": "blocks.{L}.hook_resid_post",
    "mlp": "blocks.{L}.hook_mlp_out",
    "attn": "blocks.{L}.hook_attn_out",
}
"""TransformerLens names of the sites, for users who think in those."""

POSITION_MODES = ("after_instruction", "all", "generated", "span", "regex")


@overload
def parse_layers(spec: Any, n_layers: int, name: str = ...) -> list[int]: ...
@overload
def parse_layers(spec: Any, n_layers: None = None, name: str = ...) -> list[int] | None: ...
def parse_layers(spec: Any, n_layers: int | None = None, name: str = "layers") -> list[int] | None:
    """Resolve a layer spec to a sorted, non-empty list (None = every layer).

    Args:
        spec: `all`/None, an int, `"13"`, `"10,12"`, `"10-14"`, `"[10,12]"` or a list of ints.
        n_layers: when given, every layer must lie in 0..n_layers-1.
        name: the argument's name in error messages.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return None if n_layers is None else list(range(n_layers))
    out: list[int] = []
    try:
        if isinstance(spec, bool):
            raise ValueError
        if isinstance(spec, (int, float)):
            if float(spec) != int(spec):
                raise ValueError
            out = [int(spec)]
        elif isinstance(spec, str):
            for part in spec.strip("[]() ").split(","):
                part = part.strip()
                if not part:
                    continue
                lo_text, sep, hi_text = part[1:].partition("-")
                if sep:
                    lo, hi = int(part[0] + lo_text), int(hi_text)
                    if hi < lo:
                        raise CAAEvalError(f"{name}={spec!r}: the range {part} runs backwards; write {hi}-{lo}")
                    out.extend(range(lo, hi + 1))
                else:
                    out.append(int(part))
        else:
            for x in spec:
                if isinstance(x, bool) or float(x) != int(x):
                    raise ValueError
                out.append(int(x))
    except (ValueError, TypeError):
        raise CAAEvalError(f"{name}={spec!r} not understood; write all, 13, [10,12] or 10-14") from None
    if not out:
        raise CAAEvalError(f"{name}={spec!r} names no layer; write all, 13, [10,12] or 10-14")
    if n_layers is not None:
        bad = sorted({x for x in out if not 0 <= x < n_layers})
        if bad:
            raise CAAEvalError(f"{name}: layers {bad} out of range; the model has layers 0..{n_layers - 1}")
    return sorted(set(out))


def parse_site(value: Any, source: str = "", hint: str = "") -> str:
    """One of `SITES`, or one error line in one wording wherever a site is read (CLI, model args, files, hooks).

    Args:
        value: the site as the user or a file spelled it.
        source: where it came from (a file name), prefixed to the message.
        hint: an extra remedy appended in parentheses.
    """
    if value not in SITES:
        where = f"{source}: " if source else ""
        extra = f" ({hint})" if hint else ""
        raise CAAEvalError(f"{where}site={value!r} not understood; write one of {', '.join(SITES)}{extra}")
    return str(value)


def parse_multiplier(value: Any, name: str = "multiplier") -> float:
    """A finite float; `nan`/`inf`/text are refused (they would steer silently wrong)."""
    try:
        m = float(value)
    except (TypeError, ValueError):
        raise CAAEvalError(f"{name}={value!r} is not a number; write e.g. {name}=-1.5") from None
    if not math.isfinite(m):
        raise CAAEvalError(f"{name}={value!r} is not finite; write a number such as {name}=2")
    return m


def format_multiplier(m: float) -> str:
    """`0`, `+1`, `-0.5`: the one spelling of a multiplier in folder names, tables and reports."""
    return "0" if m == 0 else f"{m:+g}"


# ----------------------------------------------------------------------------------------- behaviours

BEHAVIOURS: tuple[str, ...] = (
    "coordinate-other-ais",
    "corrigible-neutral-HHH",
    "hallucination",
    "myopic-reward",
    "survival-instinct",
    "sycophancy",
    "refusal",
)
"""CAA's seven behaviours, spelled as CAA's dataset folders."""


def behaviour_key(name: str) -> str:
    """The spelling every step compares on: CAA's own for its 7 behaviours, else `_` → `-` (user behaviours)."""
    key = str(name).strip().replace("_", "-")
    for b in BEHAVIOURS:
        if b.lower() == key.lower():
            return b
    return key


def caa_behaviour(name: str) -> str:
    """One of CAA's 7 behaviours by any spelling; anything else is an error."""
    key = behaviour_key(name)
    if key not in BEHAVIOURS:
        raise CAAEvalError(f"unknown behaviour {name!r}; choose from {', '.join(BEHAVIOURS)} (or pass a file path)")
    return key


def task_suffix(behaviour: str) -> str:
    """Task-name form of a behaviour: `coordinate-other-ais` -> `coordinate_other_ais`."""
    return behaviour_key(behaviour).replace("-", "_")


def ab_task_name(behaviour: str, balanced: bool = False) -> str:
    return f"caa_ab_{'balanced_' if balanced else ''}{task_suffix(behaviour)}"


def open_task_name(behaviour: str) -> str:
    return f"caa_open_{task_suffix(behaviour)}"


# ----------------------------------------------------------------------------------------- task families

JUDGE_METRIC = "judge_score"
# per-item metrics that are probabilities: steerability fits their log-odds (every other metric as it is)
PROBABILITY_METRICS = ("p_match", "p_correct", "p_match_orig")

# task-name prefix -> (family, primary metric, behaviour-specific?); order matters (balanced before plain A/B)
TASK_FAMILIES: tuple[tuple[str, str, str, bool], ...] = (
    ("caa_ab_balanced_", "caa_ab_balanced", "p_match", True),
    ("caa_ab_", "caa_ab", "p_match", True),
    ("caa_open_", "caa_open", JUDGE_METRIC, True),
    ("caa_mmlu_2opt_full", "caa_mmlu_2opt_full", "p_correct", False),
    ("caa_mmlu_2opt", "caa_mmlu_2opt", "p_correct", False),
    ("caa_tqa_2opt", "caa_tqa_2opt", "p_correct", False),
    ("caa_demo_", "caa_demo", "", True),
)


CAPABILITY_TASKS = ("caa_mmlu_2opt", "caa_tqa_2opt")
"""Shared tasks every vector is measured on with a sweep's `cross_tasks` (side effects on capabilities); one
that the installed task folder lacks is left out."""


def _family_row(task: str) -> tuple[str, str, str, bool] | None:
    for row in TASK_FAMILIES:
        if task == row[1] or task.startswith(row[0]):
            return row
    return None


def task_family(task: str) -> str:
    """The CAA task family of an lm-eval task name (`caa_ab`, `caa_open`, `caa_mmlu_2opt`, …) or ""."""
    row = _family_row(task)
    return row[1] if row else ""


def primary_metric(task: str) -> str | None:
    """The metric a family is judged by (p_match, p_correct, judge_score), None for unknown tasks."""
    row = _family_row(task)
    return (row[2] or None) if row else None


def behaviour_of_task(task: str, known: Sequence[str] | None = None) -> str | None:
    """`caa_ab_coordinate_other_ais` -> `coordinate-other-ais`; None for shared tasks (MMLU) and unknown ones.

    Args:
        task: an lm-eval task name.
        known: behaviours to match against (default: CAA's 7 and any other suffix as given).
    """
    row = _family_row(task)
    if row is None or not row[3] or task == row[1]:
        return None
    suffix = task[len(row[0]) :]
    if known is not None:
        by_suffix = {task_suffix(b).lower(): b for b in known}
        return by_suffix.get(suffix.lower())
    return behaviour_key(suffix)


# ----------------------------------------------------------------------------------------- lm-eval file names

_DATE = r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?"
SAMPLES_RE = re.compile(rf"^samples_(?P<task>.+?)(?:_(?P<date>{_DATE}))?\.jsonl$")
JUDGED_RE = re.compile(rf"^judged_(?P<task>.+?)(?:_(?P<date>{_DATE}))?\.jsonl$")
RESULTS_RE = re.compile(rf"^.*_(?P<date>{_DATE})\.json$")
CAA_VECTOR_RE = re.compile(r"^vec_layer_(?P<layer>\d+)_(?P<model>.+)\.pt$")
"""CAA's own vector files: `vectors/<behavior>/vec_layer_<L>_<model>.pt` (bare tensors)."""


def samples_task(path: str | Path) -> str | None:
    """The task name in an lm-eval `samples_<task>_<date>.jsonl` file name, None if it is not one."""
    m = SAMPLES_RE.match(Path(path).name)
    return m.group("task") if m else None


def judged_task(path: str | Path) -> str | None:
    """The task name in a `judged_<task>_<date>.jsonl` file name, None if it is not one."""
    m = JUDGED_RE.match(Path(path).name)
    return m.group("task") if m else None


FINETUNE_DIR = "finetunes"
"""A sweep's adapters: RUN_DIR/finetunes/<condition>/<behaviour>/ (written by the sweep, read by the report)."""
