"""`caa-eval import-caa DIR --out-dir OUT`: CAA's published `.pt` vectors as caa-eval vector files."""

from __future__ import annotations

import argparse
from pathlib import Path

from caa_eval.cli.arguments import existing_path

__all__ = ["configure", "run", "OUTPUTS", "ARGUMENTS"]

_CHOICES = {"auto": None, "yes": True, "no": False}
OUTPUTS = {"out_dir": "folder"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder", type=Path, help="CAA's vectors/ or normalized_vectors/ folder (<behavior>/vec_layer_<L>_<model>.pt)"
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="writes OUT/<model>/<behaviour>.safetensors")
    parser.add_argument(
        "--normalized",
        choices=sorted(_CHOICES),
        default="auto",
        help="are the files CAA-normalised? auto: from the folder name or equal norms",
    )


def run(args: argparse.Namespace) -> int:
    from caa_eval.core.caa_layout import import_caa_dir
    from caa_eval.core.vectors import load

    for path in import_caa_dir(args.folder, args.out_dir, _CHOICES[args.normalized]):
        sv = load(path)
        state = "CAA-normalised" if sv.normalization else "raw"
        print(f"{path}  {sv.behaviour}  {sv.model}  layers {sv.layers[0]}..{sv.layers[-1]}  {state}")
    return 0


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    existing_path("folder", kind="folder", what="CAA's vectors/ or normalized_vectors/"),
]
