"""`caa-eval tokens`: per-token cosine similarity with a steering vector (CAA §8.1) as JSON, HTML and PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from caa_eval.cli.arguments import after_load, custom, free, number, vector_file, vector_layer
from caa_eval.errors import CAAEvalError

__all__ = ["configure", "run", "OUTPUTS", "ARGUMENTS"]

OUTPUTS = {"json": "file", "html": "file", "png": "file"}  # the dispatcher checks these are writable first


def configure(parser: argparse.ArgumentParser) -> None:
    from caa_eval.models import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"HF path/ID or the alias {DEFAULT_MODEL} (default)")
    parser.add_argument("--vector", type=Path, required=True, help="vector file (.safetensors from caa-eval extract)")
    parser.add_argument("--layer", type=int, required=True, help="layer whose vector and activations are compared")
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--prompt", help="text to analyse (a user turn of the chat template by default)")
    text.add_argument("--question", help="a question the model answers first (with --generate N)")
    parser.add_argument(
        "--generate",
        type=int,
        default=0,
        metavar="N",
        help="with --question: generate N answer tokens (greedy, unsteered) and include them",
    )
    parser.add_argument(
        "--no-chat-template",
        action="store_true",
        help="tokenize the text as given (with the tokenizer's default special tokens)",
    )
    parser.add_argument("--json", type=Path, required=True, help="output JSON: {layer, tokens: [{id, token, cosine}]}")
    parser.add_argument("--html", type=Path, required=True, help="output HTML page (offline, one span per token)")
    parser.add_argument("--png", type=Path, help="also draw the colouring as a PNG")
    parser.add_argument("--title", help="heading of the HTML/PNG (default: behaviour, layer and text)")
    parser.add_argument("--scale", type=float, help="|cosine| at full colour (default: the largest |cosine|)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")


def run(args: argparse.Namespace) -> int:
    from caa_eval.analysis.token_view import write_html, write_png
    from caa_eval.analysis.tokens import token_cosines
    from caa_eval.cli.arguments import check_model_layers
    from caa_eval.core.vectors import load
    from caa_eval.files import write_atomic
    from caa_eval.models import load_model

    sv = load(args.vector)
    vector = sv.select([args.layer], str(args.vector))[args.layer]
    model, tokenizer = load_model(args.model, args.dtype)
    check_model_layers(model, [args.layer], "--layer")
    text = args.prompt if args.prompt is not None else args.question
    meta = {"model": args.model, "vector": str(args.vector), "behaviour": sv.behaviour, "text": text}
    result = token_cosines(
        model,
        tokenizer,
        vector,
        args.layer,
        text,
        generate=args.generate,
        chat_template=not args.no_chat_template,
        site=sv.site,
        meta=meta,
    )
    write_atomic(args.json, json.dumps(result.to_json(), indent=1, ensure_ascii=False) + "\n")
    short = text if len(text) <= 70 else text[:67] + "..."
    title = args.title or f"{sv.behaviour} vector, layer {args.layer}: \u201c{short}\u201d"
    subtitle = (
        f"model {args.model} · vector {args.vector} ({sv.site}) · "
        f"{'chat template' if not args.no_chat_template else 'raw text'} · {len(result.ids)} tokens"
        + (f", {len(result.ids) - result.n_prompt} generated" if args.generate else "")
    )
    write_html(result, args.html, title, args.scale, subtitle)
    if args.png:
        write_png(result, args.png, title, args.scale)
    lo, hi = min(result.cosines), max(result.cosines)
    top = sorted(range(len(result.ids)), key=lambda k: result.cosines[k], reverse=True)[:5]
    print(
        f"layer {args.layer}: {len(result.ids)} tokens, cosine {lo:+.3f} .. {hi:+.3f}; "
        f"most aligned: {', '.join(repr(result.tokens[k]) for k in top)}"
    )
    print(f"wrote {args.json} and {args.html}" + (f" and {args.png}" if args.png else ""))
    return 0


def _check_generate(args: argparse.Namespace) -> None:
    if args.generate < 0:
        raise CAAEvalError(f"--generate {args.generate}: write a count of answer tokens, e.g. --generate 60")
    if args.prompt is not None and args.generate:
        raise CAAEvalError("--generate goes with --question (the model answers it); with --prompt drop --generate")
    if args.question is not None and args.generate <= 0:
        raise CAAEvalError("--question needs --generate N (answer tokens to generate), e.g. --generate 60")


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    free("--model", "HF path/ID or the embedded alias", "when the model loads (the load itself)", before_load=False),
    vector_file("--vector"),
    vector_layer("--vector", "--layer"),
    after_load("--layer", "exists in the model", "right after the model loads, before any forward pass"),
    free("--prompt", "any text; exactly one of --prompt / --question", "argparse (usage error)"),
    free("--question", "any text; exactly one of --prompt / --question", "argparse (usage error)"),
    custom("--generate", ">= 1 with --question, 0 (left out) with --prompt", _check_generate),
    free("--title", "any text"),
    number("--scale", gt=0, le=1, example="0.5", why="the |cosine| drawn at full colour"),
]
