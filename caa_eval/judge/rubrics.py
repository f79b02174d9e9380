"""Behaviour rubrics: what 0 and 10 mean for each behaviour, built in or from the user's YAML file.

A rubric's hash covers the prompt too, so cached scores are reused only for the exact same question put to
the judge, and results judged with different rubrics can be told apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from caa_eval.errors import CAAEvalError
from caa_eval.judge.prompt import PROMPT_VERSION, RETRY_PROMPT, SYSTEM_PROMPT, USER_TEMPLATE
from caa_eval.vocab import behaviour_key

__all__ = ["Rubric", "load_rubrics", "builtin_rubrics_path", "rubric_for"]


@dataclass(frozen=True)
class Rubric:
    """One behaviour's grading text; `sha` covers everything that shapes the judge prompt."""

    behaviour: str
    text: str

    @property
    def sha(self) -> str:
        payload = json.dumps([PROMPT_VERSION, SYSTEM_PROMPT, USER_TEMPLATE, RETRY_PROMPT, self.behaviour, self.text])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def builtin_rubrics_path() -> Path:
    """Where the 7 built-in rubrics ship (package data beside this module)."""
    return Path(str(resources.files("caa_eval.judge").joinpath("rubrics.yaml")))


def _parse_rubric_mapping(data: object, source: str) -> dict[str, Rubric]:
    if not isinstance(data, Mapping):
        raise CAAEvalError(f"{source}: expected a YAML mapping `behaviour-name: rubric text`")
    out: dict[str, Rubric] = {}
    for name, value in data.items():
        if isinstance(value, Mapping):  # also accept `name: {rubric: text}`
            value = value.get("rubric")
        if not isinstance(name, str) or not name.strip() or not isinstance(value, str) or not value.strip():
            raise CAAEvalError(f"{source}: entry {name!r} must map a behaviour name to a non-empty rubric text")
        out[name.strip()] = Rubric(name.strip(), " ".join(value.split()))
    return out


def load_rubrics(extra: str | Path | Mapping[str, str] | None = None) -> dict[str, Rubric]:
    """The 7 built-in rubrics, with entries from a user YAML file (or a mapping) replacing or adding.

    Args:
        extra: a YAML file `behaviour: rubric text` (or `behaviour: {rubric: text}`), a mapping, or None.
    """
    import yaml

    text = resources.files("caa_eval.judge").joinpath("rubrics.yaml").read_text(encoding="utf-8")
    builtin = yaml.safe_load(text)
    rubrics = _parse_rubric_mapping(builtin, "built-in rubrics")
    if extra is None:
        return rubrics
    if isinstance(extra, Mapping):
        rubrics.update(_parse_rubric_mapping(extra, "rubrics argument"))
        return rubrics
    path = Path(extra)
    if not path.is_file():
        raise CAAEvalError(f"rubric file {path} not found; pass a YAML file mapping behaviour names to rubric texts")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CAAEvalError(f"{path}: invalid YAML ({str(exc).splitlines()[0]}); fix the rubric file") from None
    rubrics.update(_parse_rubric_mapping(data, str(path)))
    return rubrics


def rubric_for(behaviour: str | None, rubrics: Mapping[str, Rubric]) -> str | None:
    """The rubric name for a behaviour: exact, else the same behaviour in another spelling (`_` for `-`, case).

    Args:
        behaviour: a behaviour name as found in a doc or task name.
        rubrics: the rubrics in use.
    """
    if not behaviour:
        return None
    if behaviour in rubrics:
        return behaviour
    key = behaviour_key(behaviour).lower()
    return next((name for name in rubrics if behaviour_key(name).lower() == key), None)
