"""`caa-eval inspect FILE`: a vector file's metadata and per-layer norms."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from caa_eval.core.vectors import load


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path)


def run(args: argparse.Namespace) -> int:
    sv = load(args.file)
    print(json.dumps(sv.metadata(), indent=2))
    for layer in sv.layers:
        print(f"layer {layer:3d}  norm {float(sv.vectors[layer].float().norm()):.4f}")
    return 0
