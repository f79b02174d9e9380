"""`caa-eval convert IN --to gguf|lm-eval|repeng|caa --out OUT`: a vector for llama.cpp, lm-eval, repeng or CAA."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from caa_eval.cli.arguments import custom, free, parsed, vector_file
from caa_eval.core.formats import TARGETS
from caa_eval.vocab import parse_multiplier

# where each target steers: compare with steered-hf positions=... (docs/vectors.md has the table)
_POSITIONS = {
    "gguf": "llama.cpp adds direction.N at every position (prompt and generated): steered-hf positions=all",
    "lm-eval": "lm-eval steered adds at every position: steered-hf positions=all",
    "repeng": "repeng adds at every position after left padding: steered-hf positions=all",
    "caa": "CAA's own scripts steer from the end of the instruction on: steered-hf positions=after_instruction",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="a vector in any format caa-eval reads (.safetensors, .pt, .gguf)")
    parser.add_argument(
        "--to", required=True, choices=list(TARGETS), help="; ".join(f"{k}: {v}" for k, v in TARGETS.items())
    )
    parser.add_argument("--out", type=Path, required=True, help="output file (a folder for --to caa)")
    parser.add_argument(
        "--model-hint",
        default=None,
        help="model name the target records (GGUF controlvector.model_hint, CAA's vec_layer_<L>_<model>.pt); "
        "default: the model's architecture from its config.json, else the vector's model name",
    )
    parser.add_argument(
        "--multiplier",
        default="1",
        help="lm-eval: steering_coefficient; gguf/repeng/caa (no coefficient): the vectors are scaled by it",
    )


def run(args: argparse.Namespace) -> int:
    from caa_eval.core.formats import check_target, convert
    from caa_eval.core.vectors import load
    from caa_eval.vocab import parse_multiplier

    multiplier = parse_multiplier(args.multiplier)
    check_target(args.to, args.out)
    sv = load(args.file)
    written, warnings = convert(sv, args.to, args.out, args.model_hint, multiplier)
    for line in warnings:
        print(f"caa-eval convert: warning: {line}", file=sys.stderr)
    for path in written:
        print(path)
    print(f"caa-eval layer N is {args.to}'s layer N; {_POSITIONS[args.to]}")
    return 0


def _target(args: argparse.Namespace) -> None:
    from caa_eval.core.formats import check_target

    check_target(args.to, args.out)


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    custom("--out", "a file with the target's suffix (.gguf, .pt), a folder for --to caa", _target),
    vector_file("file"),
    free("--model-hint", "any model name"),
    parsed("--multiplier", "a finite number", parse_multiplier),
]
