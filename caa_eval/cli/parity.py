"""`caa-eval parity`: the same items through steered-hf, lm-eval's `steered` and llama.cpp; do they agree?"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from caa_eval.cli.arguments import (
    after_load,
    custom,
    device,
    existing_path,
    free,
    number,
    parsed,
    vector_file,
    vector_file_layers,
)
from caa_eval.models import DEFAULT_MODEL
from caa_eval.vocab import parse_layers, parse_multiplier

OUTPUTS = {"json": "file"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"HF model path or {DEFAULT_MODEL} (default)")
    parser.add_argument("--vector", type=Path, required=True, help="a vector in any format caa-eval reads")
    parser.add_argument("--layer", required=True, help="caa-eval layer(s) to steer: 13, [12,13] or 10-14")
    parser.add_argument("--multiplier", default="1", help="steered-hf multiplier = lm-eval steering_coefficient")
    parser.add_argument("--task", required=True, help="one lm-eval task with log-likelihood requests")
    parser.add_argument("--limit", type=int, default=None, help="first N items")
    parser.add_argument(
        "--backends",
        default="steered-hf,lm-eval-steered",
        help="comma-separated, the first is the reference: steered-hf, lm-eval-steered, llama-cpp",
    )
    parser.add_argument(
        "--gguf", type=Path, default=None, help="the model as GGUF for llama-cpp (default: the embedded one)"
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto (default)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest |Δ log p| that counts as agreement")
    parser.add_argument("--json", type=Path, default=None, help="write the per-item report as JSON")


def run(args: argparse.Namespace) -> int:
    from caa_eval.core.vectors import load
    from caa_eval.errors import CAAEvalError
    from caa_eval.files import write_atomic
    from caa_eval.lmeval.parity import check_backends, run_parity
    from caa_eval.models import resolve_device
    from caa_eval.vocab import format_multiplier, parse_layers, parse_multiplier

    backends = check_backends(args.backends)
    resolve_device(args.device)
    multiplier = parse_multiplier(args.multiplier)
    layers = parse_layers(args.layer)
    if args.limit is not None and args.limit < 1:
        raise CAAEvalError(f"--limit {args.limit}: write a positive number of items")
    vector = load(args.vector)
    layers = layers or vector.layers
    start = time.monotonic()
    report = run_parity(
        args.model, vector, layers, multiplier, args.task, backends, args.limit, args.batch_size, args.tolerance,
        args.gguf, args.device,
    )  # fmt: skip
    print(
        f"parity: {args.task}, {len(report.items)} items, layers {layers}, multiplier {format_multiplier(multiplier)}"
    )
    for name, info in report.backends.items():
        print(f"  {name}: steers {info['positions']}; vector: {info['vector']}")
    print("\n".join(report.lines()))
    if args.json is not None:
        write_atomic(args.json, json.dumps(report.to_json(), indent=2))
        print(f"wrote {args.json}")
    print(f"verdict: {report.verdict()}  ({time.monotonic() - start:.0f} s)")
    return 0


def _backends(args: argparse.Namespace) -> None:
    from caa_eval.lmeval.parity import check_backends

    check_backends(args.backends)


def _layers_in_vector(args: argparse.Namespace) -> None:
    from caa_eval.errors import CAAEvalError

    layers, held = parse_layers(args.layer, name="--layer"), vector_file_layers(args.vector)
    missing = sorted(set(layers or []) - set(held)) if held is not None else []
    if missing:
        raise CAAEvalError(f"--layer {args.layer}: {args.vector} holds layers {held}, not {missing}; pick from those")


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    after_load("--model", "an HF model path or the embedded alias", "when the first backend loads it"),
    vector_file("--vector"),
    custom("--layer", "layer(s) the vector file holds: 13, [12,13] or 10-14", _layers_in_vector),
    parsed("--multiplier", "a finite number", parse_multiplier),
    free("--task", "an lm-eval task with log-likelihood requests", "when lm-eval builds it", False),
    number("--limit", ge=1, integer=True, example="12", why="a number of items"),
    custom("--backends", "two or more of steered-hf, lm-eval-steered, llama-cpp (installed)", _backends),
    existing_path("--gguf"),
    number("--batch-size", ge=1, integer=True, example="8", why="a batch holds at least one item"),
    device(),
    number("--tolerance", gt=0, example="1e-4", why="agreement is |Δ log p| below a positive bound"),
]
