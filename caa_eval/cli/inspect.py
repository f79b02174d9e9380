"""`caa-eval inspect FILE`: a vector file's metadata and per-layer norms."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from caa_eval.cli.arguments import vector_file

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
    vector_file("file"),
]
