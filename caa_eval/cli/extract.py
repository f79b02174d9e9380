"""`caa-eval extract`: CAA steering vectors from contrast pairs into a `.safetensors` vector file."""

from __future__ import annotations

import argparse
from pathlib import Path

from caa_eval import data
from caa_eval.errors import CAAEvalError
from caa_eval.vocab import SITES

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
    if args.out.suffix != ".safetensors":
        raise CAAEvalError(f"--out {args.out}: use a .safetensors file name")
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
