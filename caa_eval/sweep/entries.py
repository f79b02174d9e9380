"""The two lists a sweep runs over besides numbers: behaviours (whose vector, which tasks) and
conditions (which model variant: checkpoint, PEFT adapter, model args, system prompt).

Both come from the config as names or mappings; each entry is checked here, with one-line errors.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caa_eval import vocab
from caa_eval.data.system_prompts import PROMPT_DIRECTIONS, behaviour_system_prompt
from caa_eval.errors import CAAEvalError
from caa_eval.sweep.validate import as_list, config_error, config_path, parse_finetune

__all__ = [
    "DEFAULT_CONDITION",
    "Behaviour",
    "Condition",
    "parse_behaviours",
    "parse_conditions",
    "check_system_prompts",
]

DEFAULT_CONDITION = "base"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class Behaviour:
    """A behaviour of the sweep: its name, where its contrast pairs come from, and its task list."""

    name: str  # CAA folder spelling for CAA behaviours (coordinate-other-ais), the user's name otherwise
    pairs: Path | None = None  # None: CAA's generate set, resolved at run time
    ab_test: Path | None = None  # custom behaviours: A/B test file -> generated task caa_ab_<name>
    open_test: Path | None = None  # custom behaviours: open-ended file -> generated task caa_open_<name>
    tasks: list[str] | None = None  # templates; None = the sweep's `tasks`; [] = vector only (no cells)

    @property
    def task_name(self) -> str:
        """Spelling inside task names (caa_ab_coordinate_other_ais)."""
        return vocab.task_suffix(self.name)

    @property
    def custom(self) -> bool:
        """True when the vector comes from the user's own pairs rather than CAA's generate set."""
        return self.pairs is not None


@dataclass
class Condition:
    """One model variant: a different checkpoint, a PEFT adapter, extra model args or a system prompt."""

    name: str = DEFAULT_CONDITION
    pretrained: str | None = None  # None = the sweep's model
    peft: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    system_instruction: str | None = None  # one system prompt for every cell
    system_prompt: str | None = None  # pos | neg: each behaviour's shipped prompt (caa_eval.data.system_prompts)
    allow_fingerprint_mismatch: bool | None = None  # None: true when the weights differ from `model` (pretrained/peft)
    finetune: dict[str, Any] | None = None  # a LoRA adapter per behaviour, trained by the sweep (sweep.finetunes)

    def model_key(self, model: str) -> str:
        """Conditions with equal keys share one loaded model."""
        key = [self.pretrained or model, self.peft, self.model_args] + ([self.finetune] if self.finetune else [])
        return json.dumps(key, sort_keys=True, default=str)

    @property
    def per_behaviour(self) -> bool:
        """Each behaviour runs its own variant (a finetuned adapter, its pos/neg system prompt), so shared tasks
        (MMLU) need a baseline per behaviour."""
        return bool(self.finetune) or self.system_prompt in PROMPT_DIRECTIONS

    def for_behaviour(self, behaviour: str) -> Condition:
        """The condition with a pos/neg system prompt resolved to `behaviour`'s text (else unchanged).

        Args:
            behaviour: the cell's behaviour.
        """
        if self.system_prompt not in PROMPT_DIRECTIONS:
            return self
        text = behaviour_system_prompt(behaviour, str(self.system_prompt))
        return dataclasses.replace(self, system_instruction=text)

    @property
    def allow_mismatch(self) -> bool:
        """Other weights than the vectors were read from: testing that transfer is the condition's point.
        A finetune condition's LoRA keeps the base weights, whose fingerprint steered-hf checks: no override."""
        if self.allow_fingerprint_mismatch is not None:
            return bool(self.allow_fingerprint_mismatch)
        return bool((self.peft or self.pretrained) and not self.finetune)


_BEHAVIOUR_FIELDS = ("name", "pairs", "ab_test", "open_test", "tasks")


def _caa_entry(name: str, source: str, tasks: list[str] | None, missing: str, fix: str) -> Behaviour:
    try:
        return Behaviour(vocab.caa_behaviour(name), tasks=tasks)
    except CAAEvalError:
        raise config_error(source, "behaviours", missing, fix) from None


def _behaviour_entry(item: Any, source: str, base: Path, fix: str) -> Behaviour:
    """One `behaviours` entry: a CAA name, or a mapping {name, pairs, ab_test, open_test, tasks}."""
    if isinstance(item, str):
        fix_name = f"choose from {', '.join(vocab.BEHAVIOURS)}, or give a custom entry {{name: {item}, pairs: FILE}}"
        return _caa_entry(item, source, None, f"unknown CAA behaviour {item!r}", fix_name)
    if not isinstance(item, dict) or "name" not in item:
        raise config_error(source, "behaviours", f"entry {item!r} not understood", fix)
    unknown = set(item) - set(_BEHAVIOUR_FIELDS)
    if unknown:
        raise config_error(
            source,
            "behaviours",
            f"entry {item['name']!r} has unknown field(s) {sorted(unknown)}",
            f"allowed: {', '.join(_BEHAVIOUR_FIELDS)}",
        )
    name = str(item["name"]).strip()
    tasks = None
    if "tasks" in item:  # [] = vector only: extracted and counted in CAA's normalisation, runs no cell
        tasks = [str(t) for t in as_list(item["tasks"])]
    if item.get("pairs") is None:
        if item.get("ab_test") or item.get("open_test"):
            raise config_error(
                source,
                "behaviours",
                f"entry {name!r} has test files but no pairs",
                "add pairs: FILE (the contrast pairs)",
            )
        missing = f"{name!r} is not a CAA behaviour and has no pairs file"
        return _caa_entry(name, source, tasks, missing, "add pairs: FILE with its contrast pairs")
    _check_name(name, source, "behaviours", "task and folder names")
    files = {
        what: config_path(item[what], base, source, f"behaviours.{what}") if item.get(what) else None
        for what in ("pairs", "ab_test", "open_test")
    }
    for what, p in files.items():
        if p is not None and not p.is_file():
            raise config_error(
                source,
                "behaviours",
                f"{name}: {what} file {p} not found",
                "fix the path (relative paths are relative to the config file)",
            )
    return Behaviour(name, tasks=tasks, **files)


def _check_name(name: str, source: str, key: str, where: str) -> None:
    if not _NAME_RE.match(name) or "__" in name:
        raise config_error(
            source, key, f"name {name!r} is not usable in {where}", "use letters, digits, '-', '_' and '.' (no '__')"
        )


def _check_unique(names: list[str], source: str, key: str, fix: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise config_error(source, key, f"{dup[0]!r} is listed twice", fix)


def parse_behaviours(value: Any, source: str, base: Path) -> list[Behaviour]:
    """CAA behaviour names (any spelling) or custom entries {name, pairs, ab_test, open_test, tasks}.

    Args:
        value: the `behaviours` list (or a comma-separated string).
        source: the config's name in error messages.
        base: folder that relative file paths are relative to.
    """
    fix = f"list CAA behaviours ({', '.join(vocab.BEHAVIOURS)}) or entries {{name: NAME, pairs: FILE}}"
    items = as_list(value)
    if not items:
        raise config_error(source, "behaviours", "missing or empty", fix)
    out = [_behaviour_entry(item, source, base, fix) for item in items]
    _check_unique([b.name for b in out], source, "behaviours", "list each behaviour once")
    return out


def _local(path: Any, base: Path) -> Any:
    """Local model/adapter paths are relative to the config file; HF ids (no such local path) stay as written."""
    if isinstance(path, str) and (base / path).exists() and not Path(path).is_absolute():
        return str(base / path)
    return path


def _system_prompt(item: dict[str, Any], name: str, source: str) -> tuple[str | None, str | None]:
    """(system_instruction, system_prompt) of a condition: a literal `system_prompt` becomes the instruction
    of every cell; pos/neg stays a direction, resolved per behaviour (`Condition.for_behaviour`)."""
    instruction, prompt = item.get("system_instruction"), item.get("system_prompt")
    if prompt is None:
        return instruction, None
    if instruction is not None:
        raise config_error(
            source, "conditions", f"{name}: both system_prompt and system_instruction", "keep one of them"
        )
    if not isinstance(prompt, str):
        raise config_error(
            source, "conditions", f"{name}: system_prompt {prompt!r} is not text", "write pos, neg or the prompt itself"
        )
    return (None, prompt) if prompt in PROMPT_DIRECTIONS else (prompt, None)


def _condition_entry(item: Any, source: str, base: Path, allowed: list[str], fix: str) -> Condition:
    """One `conditions` entry: a name, or a mapping of `Condition` fields."""
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict) or not item.get("name"):
        raise config_error(source, "conditions", f"entry {item!r} has no name", fix)
    unknown = set(item) - set(allowed)
    if unknown:
        raise config_error(
            source,
            "conditions",
            f"entry {item['name']!r} has unknown field(s) {sorted(unknown)}",
            f"allowed: {', '.join(allowed)}",
        )
    name = str(item["name"])
    _check_name(name, source, "conditions", "folder names")
    model_args = item.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise config_error(
            source, "conditions", f"{name}: model_args must be a mapping", "write model_args: {dtype: float32}"
        )
    pretrained, peft = _local(item.get("pretrained"), base), _local(item.get("peft"), base)
    finetune = None
    if item.get("finetune") is not None:
        if peft or pretrained:
            raise config_error(
                source,
                "conditions",
                f"{name}: finetune trains its own adapter on the sweep's model",
                "drop peft/pretrained from this condition (or drop finetune)",
            )
        finetune = parse_finetune(item["finetune"], source, name)
    instruction, prompt = _system_prompt(item, name, source)
    return Condition(
        name=name,
        pretrained=pretrained,
        peft=peft,
        model_args=dict(model_args),
        system_instruction=instruction,
        system_prompt=prompt,
        allow_fingerprint_mismatch=item.get("allow_fingerprint_mismatch"),
        finetune=finetune,
    )


def parse_conditions(value: Any, source: str, base: Path) -> list[Condition]:
    """Condition entries (a name or {name, pretrained, peft, model_args, system_prompt, ...}).

    `system_prompt: pos|neg` gives each behaviour's cells that behaviour's shipped system prompt; any other text
    is the system prompt of every cell (as `system_instruction`).

    Args:
        value: the `conditions` list; None = one condition `base` (the sweep's model as is).
        source: the config's name in error messages.
        base: folder that local model/adapter paths are relative to.
    """
    fix = "use conditions: [{name: base}, {name: ft, peft: PATH}, {name: pos, system_prompt: pos}]"
    if value is None:
        return [Condition()]
    items = value if isinstance(value, list) else [value]
    if not items:
        raise config_error(source, "conditions", "empty list", fix)
    allowed = [f.name for f in dataclasses.fields(Condition)]
    out = [_condition_entry(item, source, base, allowed, fix) for item in items]
    _check_unique([c.name for c in out], source, "conditions", "give every condition its own name")
    return out


def check_system_prompts(conditions: list[Condition], behaviours: list[Behaviour], source: str) -> None:
    """Every behaviour of a pos/neg condition has a shipped prompt (checked before any model load).

    Args:
        conditions: the parsed conditions.
        behaviours: the parsed behaviours.
        source: the config's name in error messages.
    """
    for cond in conditions:
        for b in behaviours:
            try:
                cond.for_behaviour(b.name)
            except CAAEvalError as exc:
                raise config_error(source, "conditions", f"{cond.name}: {exc}", "see docs/costs.md") from None
