"""`caa-eval calibrate`: the multiplier that reaches a target KL on neutral prompts, and the scale
(fraction of the residual-stream norm, KL) of given multipliers (CAA §9.1)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from caa_eval.cli.arguments import after_load, custom, free, number, positions, vector_file, vector_layer
from caa_eval.errors import CAAEvalError

__all__ = ["configure", "run", "OUTPUTS", "ARGUMENTS"]

OUTPUTS = {"json": "file", "markdown": "file"}  # the dispatcher checks these are writable first


def configure(parser: argparse.ArgumentParser) -> None:
    from caa_eval.models import DEFAULT_MODEL
    from caa_eval.vocab import SITES

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"HF path/ID or the alias {DEFAULT_MODEL} (default)")
    parser.add_argument("--vector", type=Path, nargs="+", required=True, help="vector file(s); one table row each")
    parser.add_argument("--layer", type=int, required=True, help="steered layer")
    parser.add_argument("--kl", type=float, default=0.1, help="target KL in nats (default 0.1)")
    parser.add_argument(
        "--direction",
        choices=["+", "-", "both"],
        default="+",
        help="sign of the multiplier searched (default +, the behaviour-increasing one)",
    )
    parser.add_argument("--tolerance", type=float, default=0.02, help="relative tolerance on the KL (default 0.02)")
    parser.add_argument("--max-multiplier", type=float, default=1000.0, help="give up beyond this |multiplier|")
    parser.add_argument(
        "--multipliers", help="also describe these multipliers (norm fraction and KL), e.g. --multipliers=-5,-1,1,5"
    )
    parser.add_argument("--site", choices=SITES, help="where to add the vector (default: the file's site)")
    parser.add_argument("--positions", default="after_instruction", help="which tokens get the vector (default CAA's)")
    parser.add_argument("--prompts", type=Path, help="JSON list of neutral prompts (default: the shipped set)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    parser.add_argument("--json", type=Path, help="write the numbers as JSON")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown")


def _multipliers(spec: str | None) -> list[float]:
    from caa_eval.vocab import parse_multiplier

    if not spec:
        return []
    return [parse_multiplier(x.strip(), "--multipliers") for x in spec.strip("[]").split(",") if x.strip()]


def _prompts(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CAAEvalError(f"--prompts {path}: not a readable JSON file ({exc})") from None
    if isinstance(value, dict):
        value = value.get("prompts")
    if not isinstance(value, list) or not value or not all(isinstance(p, str) and p.strip() for p in value):
        raise CAAEvalError(f'--prompts {path}: expected a JSON list of non-empty strings (or {{"prompts": [...]}})')
    return value


def run(args: argparse.Namespace) -> int:
    from caa_eval.analysis.calibrate import ScaleProbe
    from caa_eval.cli.arguments import check_model_layers
    from caa_eval.core.vectors import load
    from caa_eval.files import write_atomic
    from caa_eval.models import load_model
    from caa_eval.vocab import format_multiplier

    multipliers = _multipliers(args.multipliers)
    vectors = [(path, load(path)) for path in args.vector]
    for path, sv in vectors:
        sv.select([args.layer], str(path))
    model, tokenizer = load_model(args.model, args.dtype)
    check_model_layers(model, [args.layer], "--layer")
    probe = ScaleProbe(model, tokenizer, _prompts(args.prompts))
    resid = probe.resid_norm(args.layer)
    directions = {"+": [1], "-": [-1], "both": [1, -1]}[args.direction]
    print(f"layer {args.layer}: mean residual-stream norm {resid:.3f} on {len(probe.prompts)} neutral prompts")
    header = ["vector", "behaviour", "‖v‖"] + [f"m for KL {args.kl:g} ({d:+d})" for d in directions]
    header += [f"m={format_multiplier(m)}: norm frac / KL" for m in multipliers]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out: dict = {
        "model": args.model,
        "layer": args.layer,
        "target_kl": args.kl,
        "resid_norm": resid,
        "positions": args.positions,
        "prompts": probe.prompts,
        "vectors": [],
    }
    for path, sv in vectors:
        cells, entry = _vector_row(args, model, tokenizer, probe, path, sv, directions, multipliers)
        out["vectors"].append(entry)
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    print()
    print(table, end="")
    if args.json:
        write_atomic(args.json, json.dumps(out, indent=1) + "\n")
    if args.markdown:
        write_atomic(args.markdown, table)
    return 0


def _vector_row(
    args: argparse.Namespace,
    model: Any,
    tokenizer: Any,
    probe: Any,
    path: Path,
    sv: Any,
    directions: list[int],
    multipliers: list[float],
) -> tuple[list[str], dict[str, Any]]:
    """One vector's table cells and JSON entry: the calibrated multiplier per direction, then each multiplier's scale."""
    from caa_eval.analysis.calibrate import calibrate, multiplier_scale
    from caa_eval.vocab import format_multiplier

    cells = [path.name, sv.behaviour, f"{float(sv.vectors[args.layer].float().norm()):.3f}"]
    entry: dict[str, Any] = {"vector": str(path), "behaviour": sv.behaviour, "calibration": [], "scale": []}
    for d in directions:
        cal = calibrate(
            model,
            tokenizer,
            sv,
            args.layer,
            args.kl,
            d,
            args.site,
            args.positions,
            args.tolerance,
            args.max_multiplier,
            probe,
        )
        entry["calibration"].append(cal.to_json())
        if cal.multiplier is None:
            cells.append(f"not reached up to {format_multiplier(d * args.max_multiplier)}")
            print(f"{path}: KL {args.kl:g} not reached up to multiplier {format_multiplier(d * args.max_multiplier)}")
        else:
            cells.append(f"{cal.multiplier:+.3g} ({cal.norm_fraction:.0%} of ‖h‖)")
            print(
                f"{path}: multiplier {cal.multiplier:+.4g} reaches KL {cal.kl:.4f} "
                f"(target {args.kl:g}); the added vector is {cal.norm_fraction:.1%} of the mean residual norm"
            )
    for row in multiplier_scale(model, tokenizer, sv, args.layer, multipliers, args.site, args.positions, probe):
        entry["scale"].append(row.to_json())
        cells.append(f"{row.norm_fraction:.2f} / {row.kl:.3g}")
    return cells, entry


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    free("--model", "HF path/ID or the embedded alias", "when the model loads (the load itself)", before_load=False),
    vector_file("--vector"),
    vector_layer("--vector", "--layer"),
    after_load("--layer", "exists in the model", "right after the model loads, before any forward pass"),
    number("--kl", gt=0, example="0.1", why="a KL divergence is positive; 0 is the unsteered model"),
    number("--tolerance", gt=0, lt=1, example="0.02", why="relative to the target KL"),
    number("--max-multiplier", gt=0, example="1000", why="the search's bound on |multiplier|"),
    custom("--multipliers", "comma-separated finite numbers", lambda a: _multipliers(a.multipliers)),
    positions("--positions"),
    custom("--prompts", 'a JSON list of non-empty strings (or {"prompts": [...]})', lambda a: _prompts(a.prompts)),
]
