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
from caa_eval.errors import CAAEvalError
from caa_eval.sweep.validate import as_list, config_error, config_path

__all__ = ["DEFAULT_CONDITION", "Behaviour", "Condition", "parse_behaviours", "parse_conditions"]

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
    system_instruction: str | None = None
    allow_fingerprint_mismatch: bool | None = None  # None: true when the weights differ from `model` (pretrained/peft)
    finetune: dict[str, Any] | None = None  # a LoRA adapter per behaviour, trained by the sweep (sweep.finetunes)

    def model_key(self, model: str) -> str:
        """Conditions with equal keys share one loaded model."""
        key = [self.pretrained or model, self.peft, self.model_args] + ([self.finetune] if self.finetune else [])
        return json.dumps(key, sort_keys=True, default=str)

    @property
    def allow_mismatch(self) -> bool:
        """Other weights than the vectors were read from: testing that transfer is the condition's point.
        A finetune condition's LoRA keeps the base weights, whose fingerprint steered-hf checks: no override."""
        if self.allow_fingerprint_mismatch is not None:
            return bool(self.allow_fingerprint_mismatch)
        return bool((self.peft or self.pretrained) and not self.finetune)


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
    out: list[Behaviour] = []
    for item in items:
        if isinstance(item, str):
            try:
                out.append(Behaviour(vocab.caa_behaviour(item)))
            except CAAEvalError:
                raise config_error(
                    source,
                    "behaviours",
                    f"unknown CAA behaviour {item!r}",
                    f"choose from {', '.join(vocab.BEHAVIOURS)}, or give a custom entry {{name: {item}, pairs: FILE}}",
                ) from None
            continue
        if not isinstance(item, dict) or "name" not in item:
            raise config_error(source, "behaviours", f"entry {item!r} not understood", fix)
        unknown = set(item) - {"name", "pairs", "ab_test", "open_test", "tasks"}
        if unknown:
            raise config_error(
                source,
                "behaviours",
                f"entry {item['name']!r} has unknown field(s) {sorted(unknown)}",
                "allowed: name, pairs, ab_test, open_test, tasks",
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
            try:
                out.append(Behaviour(vocab.caa_behaviour(name), tasks=tasks))
            except CAAEvalError:
                raise config_error(
                    source,
                    "behaviours",
                    f"{name!r} is not a CAA behaviour and has no pairs file",
                    "add pairs: FILE with its contrast pairs",
                ) from None
            continue
        if not _NAME_RE.match(name) or "__" in name:
            raise config_error(
                source,
                "behaviours",
                f"name {name!r} is not usable in task and folder names",
                "use letters, digits, '-', '_' and '.' (no '__')",
            )
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
        out.append(Behaviour(name, tasks=tasks, **files))
    names = [b.name for b in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise config_error(source, "behaviours", f"{dup[0]!r} is listed twice", "list each behaviour once")
    return out


def parse_conditions(value: Any, source: str, base: Path) -> list[Condition]:
    """Condition entries (a name or {name, pretrained, peft, model_args, system_instruction, ...}).

    Args:
        value: the `conditions` list; None = one condition `base` (the sweep's model as is).
        source: the config's name in error messages.
        base: folder that local model/adapter paths are relative to.
    """
    fix = "use conditions: [{name: base}, {name: ft, peft: PATH}]"
    if value is None:
        return [Condition()]
    items = value if isinstance(value, list) else [value]
    if not items:
        raise config_error(source, "conditions", "empty list", fix)
    allowed = [f.name for f in dataclasses.fields(Condition)]
    out = []
    for item in items:
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
        if not _NAME_RE.match(name) or "__" in name:
            raise config_error(
                source,
                "conditions",
                f"name {name!r} is not usable in folder names",
                "use letters, digits, '-', '_' and '.'",
            )
        model_args = item.get("model_args") or {}
        if not isinstance(model_args, dict):
            raise config_error(
                source, "conditions", f"{name}: model_args must be a mapping", "write model_args: {dtype: float32}"
            )
        pretrained, peft = item.get("pretrained"), item.get("peft")
        # local paths are relative to the config file; HF ids (no such local path) are kept as written
        if isinstance(pretrained, str) and (base / pretrained).exists() and not Path(pretrained).is_absolute():
            pretrained = str(base / pretrained)
        if isinstance(peft, str) and (base / peft).exists() and not Path(peft).is_absolute():
            peft = str(base / peft)
        finetune = None
        if item.get("finetune") is not None:
            from caa_eval.sweep.finetunes import parse_finetune  # (imports this module)

            if peft or pretrained:
                raise config_error(
                    source,
                    "conditions",
                    f"{name}: finetune trains its own adapter on the sweep's model",
                    "drop peft/pretrained from this condition (or drop finetune)",
                )
            finetune = parse_finetune(item["finetune"], source, name)
        out.append(
            Condition(
                name=name,
                pretrained=pretrained,
                peft=peft,
                model_args=dict(model_args),
                system_instruction=item.get("system_instruction"),
                allow_fingerprint_mismatch=item.get("allow_fingerprint_mismatch"),
                finetune=finetune,
            )
        )
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise config_error(source, "conditions", f"{dup[0]!r} is listed twice", "give every condition its own name")
    return out
