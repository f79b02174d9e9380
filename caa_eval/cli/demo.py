"""`caa-eval demo`: the whole pipeline on the embedded model (the README's first command)."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    parser.add_argument("--limit", type=int, default=None, help="items per task (default: all 12)")


def run(args: argparse.Namespace) -> int:
    from caa_eval.demo import run_demo

    print(run_demo(args.out, limit=args.limit))
    return 0
