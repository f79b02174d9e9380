"""`caa-eval demo`: the whole pipeline on the embedded model (the README's first command)."""

from __future__ import annotations

import argparse
from pathlib import Path

from caa_eval.cli.arguments import number

__all__ = ["configure", "run", "OUTPUTS", "ARGUMENTS"]

OUTPUTS = {"out": "folder"}  # checked writable by the dispatcher before the model loads


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    parser.add_argument("--limit", type=int, default=None, help="items per task (default: all 12)")


def run(args: argparse.Namespace) -> int:
    from caa_eval.demo import run_demo

    print(run_demo(args.out, limit=args.limit))
    return 0


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    number("--limit", ge=1, example="4", integer=True, why="items per task"),
]
