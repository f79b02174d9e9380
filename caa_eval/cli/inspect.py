"""`caa-eval inspect FILE`: a vector file's metadata and per-layer norms."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from caa_eval.cli.arguments import existing_path

__all__ = ["configure", "run", "ARGUMENTS"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path)


def run(args: argparse.Namespace) -> int:
    from caa_eval.core.vectors import load

    sv = load(args.file)
    print(json.dumps(sv.metadata(), indent=2))
    for layer in sv.layers:
        print(f"layer {layer:3d}  norm {float(sv.vectors[layer].float().norm()):.4f}")
    return 0


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    existing_path("file", what="a vector file (its contents are what inspect checks and prints)"),
]
