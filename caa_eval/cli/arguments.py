"""Argument rules: every `caa-eval` argument's valid range, declared once next to its command and checked
by the dispatcher before the command's `run()` starts, i.e. before any model, tokenizer, dataset or vector
loads and before any output is created. docs/reliability.md's argument table is generated from these
declarations (`rules_table`), so the table cannot claim a check the code does not make.

How a command declares its rules (a new command adds its rows in a few lines):

    from caa_eval.cli.arguments import Rule, after_load, free, number, vector_layer

    ARGUMENTS = [
        number("--kl", gt=0, example="0.1", why="a KL divergence is positive"),
        vector_layer("--vector", "--layer"),
        after_load("--layer", "exists in the model", "right after the model loads, before any forward pass"),
        free("--title", "any text"),
    ]

- A `Rule` is (argument, rule in words, check, before_load). `check(args)` raises `CAAEvalError` with one
  line that names the argument and says what to write instead; it must be cheap (no model, no tensors).
- Arguments whose range argparse enforces (`choices`, flags, mutually exclusive groups) need no row: the
  table lists them from the parser. `OUTPUTS = {dest: "file" | "folder"}` adds the writable-location rows.
- What can only be checked once the model is loaded (its layer count) is an `after_load` row; the command
  checks it right after loading (`check_model_layers`), before any forward pass.
- tests/reliability/test_argument_rules.py fails when an argument has no row, and needs one bad value per
  checked row (exit 2, one stderr line naming the argument, nothing loaded, nothing written).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caa_eval.errors import CAAEvalError

__all__ = [
    "Rule",
    "number",
    "free",
    "after_load",
    "custom",
    "parsed",
    "device",
    "positions",
    "existing_path",
    "vector_file",
    "vector_layer",
    "vector_file_layers",
    "check_model_layers",
    "run_checks",
    "rules_table",
]

Check = Callable[[argparse.Namespace], object]  # raises CAAEvalError; any return value is ignored


@dataclass(frozen=True)
class Rule:
    """One argument's valid range and the check that enforces it (None: documented, checked elsewhere)."""

    argument: str  # as the user types it: `--kl`, or a positional's name (`input`)
    rule: str  # the valid range in words, for the table
    check: Check | None = None
    before_load: bool = True  # False: checked right after the model loads (see `where`)
    where: str = "before anything loads (argument rules)"


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _bound_text(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    low = f"> {gt:g}" if gt is not None else (f">= {ge:g}" if ge is not None else "")
    high = f"< {lt:g}" if lt is not None else (f"<= {le:g}" if le is not None else "")
    if gt is not None and lt is not None:
        return f"in ({gt:g}, {lt:g})"
    return " and ".join(t for t in (low, high) if t) or "any number"


def number(
    flag: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    example: str,
    why: str = "",
    dest: str | None = None,
    integer: bool = False,
) -> Rule:
    """A finite number within bounds (None = not given, the default applies).

    Args:
        flag: the option (`--kl`).
        gt, ge, lt, le: the bounds (exclusive / inclusive).
        example: a good value for the message (`--kl 0.1`).
        why: why the range is what it is (shown in the table and the message).
        dest: the argparse dest when it is not the flag's name.
        integer: whether the value is a whole count (for the table's wording).
    """
    bounds = _bound_text(gt, ge, lt, le)
    text = f"{'an integer' if integer else 'a number'} {bounds}" + (f" ({why})" if why else "")
    key = dest or _dest(flag)

    def check(args: argparse.Namespace) -> None:
        value = getattr(args, key, None)
        if value is None:
            return
        ok = math.isfinite(value) and all(
            cond
            for cond in (
                gt is None or value > gt,
                ge is None or value >= ge,
                lt is None or value < lt,
                le is None or value <= le,
            )
        )
        if not ok:
            reason = f" ({why})" if why else ""
            raise CAAEvalError(f"{flag} {value:g}: must be {bounds}{reason}; write e.g. {flag} {example}")

    return Rule(flag, text, check)


def free(flag: str, rule: str, where: str = "nothing to refuse", before_load: bool = True) -> Rule:
    """An argument with no range to check before loading (any text, or checked where it is used)."""
    return Rule(flag, rule, None, before_load, where)


def after_load(flag: str, rule: str, where: str) -> Rule:
    """A rule that needs the loaded model: checked right after loading, before any forward pass."""
    return Rule(flag, rule, None, False, where)


def custom(flag: str, rule: str, check: Check, dest: str | None = None) -> Rule:
    """A rule with its own check function (one CAAEvalError line naming `flag`).

    The check runs only when the parsed arguments hold `dest` (the flag's name by default), so a rule of one
    mode (`reproduce run`) is skipped for another (`reproduce compare`).
    """
    key = dest or _dest(flag)

    def guarded(args: argparse.Namespace) -> object:
        return check(args) if hasattr(args, key) else None

    return Rule(flag, rule, guarded)


def parsed(flag: str, rule: str, parse: Callable[[Any], Any], dest: str | None = None) -> Rule:
    """A value a vocabulary parser accepts (layer specs, positions, devices, ...); its error names `flag`."""
    key = dest or _dest(flag)

    def check(args: argparse.Namespace) -> None:
        value = getattr(args, key, None)
        if value is None:
            return
        try:
            parse(value)
        except CAAEvalError as exc:
            text = str(exc)
            raise CAAEvalError(text if flag in text else f"{flag} {value}: {text}") from None

    return Rule(flag, rule, check)


def device(flag: str = "--device") -> Rule:
    """cpu, cuda, cuda:N, mps or auto: lm-eval and torch would fall back or fail late on another name."""
    from caa_eval.sweep.validate import parse_device

    return parsed(flag, "cpu, cuda, cuda:N, mps or auto", lambda v: parse_device(v, flag))


def positions(flag: str = "--positions") -> Rule:
    """A position rule `caa_eval.core.positions.Positions` understands."""
    from caa_eval.core.positions import Positions

    return parsed(
        flag, "a position rule: after_instruction, all, generated, span:A:B or regex:PATTERN", Positions.parse
    )


def existing_path(flag: str, kind: str = "file", dest: str | None = None, what: str = "") -> Rule:
    """An input that must exist (a file or a folder; `kind="any"` for either), or each of a list."""
    key = dest or _dest(flag)

    def check(args: argparse.Namespace) -> None:
        value = getattr(args, key, None)
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            path = Path(item).expanduser()
            if not path.exists():
                shown = "file or folder" if kind == "any" else kind
                raise CAAEvalError(f"{flag} {item}: not found (no such {shown}); check the path")
            if kind != "any" and path.is_dir() != (kind == "folder"):
                actual = "folder" if path.is_dir() else "file"
                raise CAAEvalError(f"{flag} {item}: is not a {kind} (it is a {actual}); pass a {kind}")

    return Rule(
        flag, f"an existing {'file or folder' if kind == 'any' else kind}" + (f" ({what})" if what else ""), check
    )


def vector_file(flag: str, dest: str | None = None) -> Rule:
    """Existing vector file(s): a folder or a missing path is refused as the vector loader would, before it runs."""
    key = dest or _dest(flag)

    def check(args: argparse.Namespace) -> None:
        value = getattr(args, key, None)
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            path = Path(item).expanduser()
            if path.is_dir():
                raise CAAEvalError(
                    f"{flag} {item} is a folder, not a vector file; pass one .safetensors file (a CAA vectors/ "
                    "folder: convert it with `caa-eval import-caa`)"
                )
            if not path.is_file():
                raise CAAEvalError(f"{flag}: vector file not found: {item}; check the path")

    return Rule(flag, "an existing vector file (.safetensors, or CAA's / lm-eval's .pt)", check)


def vector_file_layers(path: str | Path) -> list[int] | None:
    """The layers a vector file holds, read from the safetensors header only (no tensor is loaded).

    None for a `.pt` file (its layers are known only when it is loaded) and for a file whose header is not a
    caa-eval one (the loader then says exactly what is wrong).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        return None
    try:
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100_000_000:
                return None
            header = json.loads(fh.read(size))
    except (OSError, ValueError, struct.error):
        return None
    if not isinstance(header, dict):
        return None
    names = [k for k in header if k != "__metadata__"]
    layers = [int(k.removeprefix("layer.")) for k in names if re.fullmatch(r"layer\.\d+", k)]
    return sorted(layers) if layers and len(layers) == len(names) else None


def vector_layer(vector_flag: str, layer_flag: str, vector_dest: str | None = None, optional: bool = False) -> Rule:
    """The vector file(s) exist, and the chosen layer is one the file holds (read from its header).

    Args:
        vector_flag: the vector option; its value is a path or a list of paths.
        layer_flag: the layer option (an int; None = not given).
        vector_dest: the vector option's dest, when not its name.
        optional: the layer may be omitted when the file holds one layer.
    """
    vkey, lkey = vector_dest or _dest(vector_flag), _dest(layer_flag)

    def check(args: argparse.Namespace) -> None:
        layer, value = getattr(args, lkey, None), getattr(args, vkey, None)
        if layer is not None and layer < 0:
            raise CAAEvalError(f"{layer_flag} {layer}: layers count from 0; write e.g. {layer_flag} 13")
        for item in value if isinstance(value, list) else [value]:
            if item is None or "{" in str(item):
                continue  # a pattern: checked per behaviour by the command, before the model loads
            path = Path(item).expanduser()
            if not path.is_file():
                raise CAAEvalError(f"{vector_flag} {item}: vector file not found; check the path")
            layers = vector_file_layers(path)
            if layers is None:
                continue
            if layer is None and not optional:
                continue
            if layer is None and len(layers) != 1:
                raise CAAEvalError(f"{item} holds layers {_ranges(layers)}; choose one with {layer_flag} {layers[0]}")
            if layer is not None and layer not in layers:
                raise CAAEvalError(
                    f"{layer_flag} {layer}: {item} has no vector for layer {layer} (it holds layers {_ranges(layers)}); "
                    f"pick one of those or re-extract with --layers including {layer}"
                )

    text = f">= 0 and held by every {vector_flag} file (read from the safetensors header only)"
    return Rule(layer_flag, text, check)


def _ranges(layers: list[int]) -> str:
    return ",".join(map(str, layers)) if len(layers) < 8 else f"{layers[0]}..{layers[-1]}"


def check_model_layers(model: Any, layers: Sequence[int], flag: str) -> None:
    """Right after loading, before any forward pass: every layer exists in the model.

    Args:
        model: the loaded HF model.
        layers: the layers the command will read or steer.
        flag: the option that chose them (`--layer`), for the message.
    """
    from caa_eval.core.layers import decoder_layers

    n = len(decoder_layers(model))
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise CAAEvalError(f"{flag} {bad[0]}: the model has layers 0..{n - 1}; pick one of those")


def run_checks(rules: Sequence[Rule], args: argparse.Namespace) -> None:
    """Run a command's before-load checks in declaration order (the dispatcher calls this before `run()`)."""
    for rule in rules:
        if rule.check is not None and rule.before_load:
            rule.check(args)


# ---------------------------------------------------------------------------------------------- the table


def _parsers(name: str, parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """The command's parser and, for commands with modes (`data download`), each mode's parser."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for mode, sub in action.choices.items():
                yield from _parsers(f"{name} {mode}", sub)


def argument_name(action: argparse.Action) -> str:
    """How the table names an argument: its first long option, else the positional's name."""
    longs = [o for o in action.option_strings if o.startswith("--")]
    if longs or action.option_strings:
        return (longs or action.option_strings)[0]
    return str(action.metavar or action.dest)


def _parser_rule(action: argparse.Action, outputs: dict[str, str]) -> Rule | None:
    """The row argparse itself or OUTPUTS enforces, for arguments that declare no rule."""
    name = argument_name(action)
    if action.dest in outputs:
        kind = outputs[action.dest]
        return Rule(name, f"a writable {kind} location (probed, nothing created)", None, True, "dispatcher (OUTPUTS)")
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return Rule(name, "one of " + ", ".join(map(str, action.choices)), None, True, "argparse (usage error)")
    if action.nargs == 0:
        return Rule(name, "a flag", None, True, "nothing to refuse")
    return None


def command_rows(command: str, module_name: str) -> list[tuple[str, str, Rule | None]]:
    """(command, argument, rule) for every argument of one command (one row per rule); None = no rule declared.

    Args:
        command: the subcommand (`calibrate`).
        module_name: its module under caa_eval.cli.
    """
    module = importlib.import_module(f"caa_eval.cli.{module_name}")
    parser = argparse.ArgumentParser(prog=f"caa-eval {command}")
    module.configure(parser)
    declared: dict[str, list[Rule]] = {}
    for r in getattr(module, "ARGUMENTS", []):
        declared.setdefault(r.argument, []).append(r)
    outputs = getattr(module, "OUTPUTS", {})
    rows: list[tuple[str, str, Rule | None]] = []
    for name, p in _parsers(command, parser):
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            arg = argument_name(action)
            auto = _parser_rule(action, outputs)
            own = declared.get(arg, [])
            rules: list[Rule | None] = [auto] if auto and (action.dest in outputs or not own) else []
            for rule in rules + list(own) or [None]:
                rows.append((name, arg, rule))
    return rows


def _when(rule: Rule) -> str:
    if rule.where == "nothing to refuse":
        return "-"
    return "yes" if rule.before_load else "no"


def rules_table(commands: dict[str, tuple[str, str]]) -> str:
    """docs/reliability.md's argument table: command, argument, rule, checked before load, where."""
    lines = [
        "| command | argument | valid range | checked before load | where |",
        "|---|---|---|---|---|",
    ]
    for command, (module_name, _) in commands.items():
        module = importlib.import_module(f"caa_eval.cli.{module_name}")
        if command == "eval":  # lm_eval's own parser; the steered-hf model args are declared in the module
            rows = [(command, r.argument, r) for r in getattr(module, "ARGUMENTS", [])]
        else:
            rows = [(c, a, r) for c, a, r in command_rows(command, module_name)]
        for name, arg, rule in rows:
            text, before, where = (rule.rule, _when(rule), rule.where) if rule else ("(no rule)", "-", "-")
            cell = text.replace("|", "\\|")
            lines.append(f"| {name} | `{arg}` | {cell} | {before} | {where.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
