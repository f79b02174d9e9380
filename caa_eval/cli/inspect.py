"""`caa-eval inspect FILE`: a vector file's metadata and per-layer norms (and, for files `caa-eval extract`
wrote, each layer's pair consistency and AUROC: see caa_eval.core.diagnostics)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from caa_eval.cli.arguments import vector_file
from caa_eval.core.diagnostics import DIAGNOSTICS_KEY

__all__ = ["configure", "run", "ARGUMENTS"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path)


def run(args: argparse.Namespace) -> int:
    from caa_eval.core.vectors import load

    sv = load(args.file)
    print(json.dumps(sv.metadata(), indent=2))
    diagnostics = sv.extra.get(DIAGNOSTICS_KEY) or {}
    for layer in sv.layers:
        line = f"layer {layer:3d}  norm {float(sv.vectors[layer].float().norm()):.4f}"
        if str(layer) in diagnostics:
            d = diagnostics[str(layer)]
            line += f"  pair consistency {d['consistency']:.3f}  AUROC {d['auroc']:.3f}"
        print(line)
    return 0


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    vector_file("file"),
]
