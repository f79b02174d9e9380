"""`caa-eval normalize`: CAA's per-layer rescaling of several behaviours' vectors to their mean norm."""

from __future__ import annotations

import argparse
from pathlib import Path

from caa_eval.core.vectors import load, normalize_to_mean_norm, ranges
from caa_eval.errors import CAAEvalError

OUTPUTS = {"out_dir": "folder"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="one vector file per behaviour (same model)")
    parser.add_argument("--out-dir", type=Path, required=True, help="where to write the normalised files (same names)")


def run(args: argparse.Namespace) -> int:
    vectors = [load(p) for p in args.files]
    outs = [args.out_dir / path.name for path in args.files]
    for path, out in zip(args.files, outs):
        if out.resolve() == path.resolve():
            raise CAAEvalError(f"--out-dir would overwrite the input {path}; choose another folder")
    for out, v in zip(outs, normalize_to_mean_norm(vectors)):
        v.save(out)
        print(f"{out}  layers={ranges(v.layers)}  norm@{v.layers[0]}={float(v.vectors[v.layers[0]].norm()):.4f}")
    return 0
