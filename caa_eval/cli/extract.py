"""`caa-eval extract`: CAA steering vectors from contrast pairs into a `.safetensors` vector file."""

from __future__ import annotations

import argparse
from pathlib import Path

from caa_eval import data
from caa_eval.cli.arguments import after_load, custom, device, existing_path, free, number, parsed
from caa_eval.errors import CAAEvalError
from caa_eval.vocab import SITES, parse_layers

__all__ = ["configure", "run", "OUTPUTS", "ARGUMENTS"]

OUTPUTS = {"out": "file"}


def configure(parser: argparse.ArgumentParser) -> None:
    from caa_eval.models import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"HF path/ID or the alias {DEFAULT_MODEL}")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--data",
        type=Path,
        help="contrast pairs: JSON list or JSONL of {question, answer_matching_behavior, answer_not_matching_behavior}",
    )
    src.add_argument(
        "--behavior", "--behaviour", dest="behaviour_name", help="a CAA behaviour by name (its generate set)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    parser.add_argument("--layers", default="all", help="all | 13 | [10,12] | 10-14 (default: all)")
    parser.add_argument("--site", default="residual", choices=SITES)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--system-prompt", default=None, help="optional system message in every prompt")
    parser.add_argument("--behaviour-label", default=None, help="behaviour name recorded in the file")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (cuda if available)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="weights' dtype (the differences are summed in float64 either way)",
    )
    parser.add_argument(
        "--read",
        default="letter",
        choices=["letter", "answer_mean"],
        help="letter (CAA: the answer-letter token) or answer_mean (mean over free-text answers)",
    )


def run(args: argparse.Namespace) -> int:
    from caa_eval.core.extract import extract_to_file

    data_path = args.data
    label = args.behaviour_label
    if args.behaviour_name:
        data_path = data.resolve_behaviour_pairs(args.behaviour_name, split="generate")
        label = label or args.behaviour_name
    sv = extract_to_file(
        args.model,
        data_path,
        args.out,
        args.layers,
        args.site,
        args.batch_size,
        label,
        args.system_prompt,
        read=args.read,
        device=args.device,
        dtype=args.dtype,
    )
    norms = ", ".join(
        f"L{layer}={float(sv.vectors[layer].norm()):.3f}" for layer in sv.layers[:: max(1, len(sv.layers) // 6)]
    )
    print(
        f"wrote {args.out}: {sv.behaviour}, {sv.n_pairs} pairs, {len(sv.layers)} layers, site={sv.site}; norms {norms}"
    )
    return 0


def _check_out(args: argparse.Namespace) -> None:
    if args.out.suffix != ".safetensors" and not args.out.is_dir():  # a folder: the OUTPUTS check says so
        raise CAAEvalError(f"--out {args.out}: use a .safetensors file name")


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    free("--model", "HF path/ID or the embedded alias", "when the model loads (the load itself)", before_load=False),
    existing_path("--data", what="contrast pairs; their contents are checked when read, before the model loads"),
    parsed(
        "--behavior",
        "one of CAA's behaviours whose data is found (--data-dir / CAA_EVAL_DATA_DIR / the cache)",
        lambda v: data.resolve_behaviour_pairs(v, split="generate"),
        dest="behaviour_name",
    ),
    custom("--out", "a .safetensors file name", _check_out),
    parsed("--layers", "all, 13, [10,12] or 10-14", lambda v: parse_layers(v, name="--layers")),
    after_load("--layers", "every layer exists in the model", "extract_vectors, right after the model loads"),
    number("--batch-size", ge=1, example="16", integer=True),
    free("--system-prompt", "any text"),
    free("--behaviour-label", "any name (recorded in the file)"),
    device("--device"),
]
