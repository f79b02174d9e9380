"""`caa-eval similarity`: cosine similarity of steering vectors across layers (CAA §8.2) or between two
vector files layer by layer (§8.3: base vs chat model, two behaviours, two datasets)."""

from __future__ import annotations

import argparse
from pathlib import Path

from caa_eval.cli.arguments import free, vector_file

__all__ = ["configure", "run", "OUTPUTS", "ARGUMENTS"]

OUTPUTS = {"csv": "file", "png": "file"}  # the dispatcher checks these are writable first


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="mode", metavar="{layers,files}", required=True)
    layers = sub.add_parser("layers", help="cosine between one file's vectors at every pair of layers")
    layers.add_argument("file", type=Path, help="vector file holding several layers (extract --layers all)")
    layers.add_argument(
        "--csv", type=Path, required=True, help="output CSV: layer_a,layer_b,cosine (all ordered pairs)"
    )
    layers.add_argument("--png", type=Path, help="heat map")
    layers.add_argument("--title", help="plot title (default: behaviour and model from the file)")
    files = sub.add_parser("files", help="per common layer, the cosine between file A's and file B's vector")
    files.add_argument("a", type=Path, help="vector file A (e.g. from the base model)")
    files.add_argument("b", type=Path, help="vector file B (e.g. from the chat model)")
    files.add_argument("--csv", type=Path, required=True, help="output CSV: layer,cosine")
    files.add_argument("--png", type=Path, help="line plot of cosine vs layer")
    files.add_argument("--title", help="plot title (default: names of the two files)")


def run(args: argparse.Namespace) -> int:
    from caa_eval.analysis import similarity
    from caa_eval.core.vectors import load

    if args.mode == "layers":
        sv = load(args.file)
        result = similarity.layer_matrix(sv)
        similarity.layer_matrix_csv(result, args.csv)
        if args.png:
            similarity.plot_layer_matrix(
                result, args.png, args.title or f"{sv.behaviour}: cosine between layers\n({sv.model})"
            )
        n = len(result.layers)
        near = [float(result.matrix[i, i + 1]) for i in range(n - 1)]
        print(
            f"{args.file}: {n} layers; adjacent-layer cosine {min(near):.3f} .. {max(near):.3f}, "
            f"layer {result.layers[0]} vs {result.layers[-1]}: {float(result.matrix[0, -1]):.3f}"
        )
        print(f"wrote {args.csv}" + (f" and {args.png}" if args.png else ""))
        return 0
    a, b = load(args.a), load(args.b)
    rows = similarity.compare_files(a, b, str(args.a), str(args.b))
    similarity.comparison_csv(rows, args.csv)
    if args.png:
        label = f"{args.a.stem} vs {args.b.stem}"
        similarity.plot_comparison({label: rows}, args.png, args.title or f"cosine per layer: {label}")
    best = max(rows, key=lambda r: r[1])
    print(
        f"{len(rows)} common layers; cosine {min(r[1] for r in rows):.3f} .. {best[1]:.3f} (highest at layer {best[0]})"
    )
    print(f"wrote {args.csv}" + (f" and {args.png}" if args.png else ""))
    return 0


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    vector_file("file"),
    vector_file("a"),
    vector_file("b"),
    free("--title", "any text"),
]
