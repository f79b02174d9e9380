"""`caa-eval normalize`: CAA's per-layer rescaling of several behaviours' vectors to their mean norm."""

from __future__ import annotations

import argparse
from pathlib import Path

from caa_eval.cli.arguments import custom, vector_file
from caa_eval.errors import CAAEvalError

__all__ = ["configure", "run", "OUTPUTS", "ARGUMENTS"]

OUTPUTS = {"out_dir": "folder"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="one vector file per behaviour (same model)")
    parser.add_argument("--out-dir", type=Path, required=True, help="where to write the normalised files (same names)")


def run(args: argparse.Namespace) -> int:
    from caa_eval.core.vectors import load, normalize_to_mean_norm, ranges

    vectors = [load(p) for p in args.files]
    outs = [args.out_dir / path.name for path in args.files]
    for out, v in zip(outs, normalize_to_mean_norm(vectors)):
        v.save(out)
        print(f"{out}  layers={ranges(v.layers)}  norm@{v.layers[0]}={float(v.vectors[v.layers[0]].norm()):.4f}")
    return 0


def _check_files(args: argparse.Namespace) -> None:
    if len(args.files) < 2:
        raise CAAEvalError(
            "files: normalising needs at least two vector files (one has nothing to share a mean norm with); pass two or more"
        )
    names = [p.name for p in args.files]
    if len(set(names)) < len(names):
        raise CAAEvalError("files: two inputs share a file name (outputs keep the names); rename one")


def _check_out_dir(args: argparse.Namespace) -> None:
    for path in args.files:
        if (args.out_dir / path.name).resolve() == path.resolve():
            raise CAAEvalError(f"--out-dir would overwrite the input {path}; choose another folder")


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    vector_file("files"),
    custom("files", "two or more, with distinct file names", _check_files),
    custom("--out-dir", "not the folder of an input (outputs keep the input names)", _check_out_dir),
]
