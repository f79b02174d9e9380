"""`caa-eval report`: report.md, report.json and PNG figures for a sweep folder, run folder or long table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from caa_eval.cli.arguments import custom, device, existing_path, number
from caa_eval.cli.stats import COMMON_ARGUMENTS, add_common_arguments
from caa_eval.errors import CAAEvalError

__all__ = ["configure", "run", "OUTPUTS", "ARGUMENTS"]

OUTPUTS = {"out": "folder"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `caa-eval report`.

    Args:
        parser: the `caa-eval report` parser.
    """
    parser.add_argument(
        "input", type=Path, help="sweep folder, lm_eval --output_path folder, or a .csv/.jsonl long table"
    )
    parser.add_argument("--out", type=Path, help="output folder (default RUN_DIR/report or TABLE_report/)")
    parser.add_argument(
        "--tokens",
        type=int,
        default=0,
        metavar="N",
        help="add per-token views (§8.1) of the first N open-ended examples to report.html (loads the sweep's model)",
    )
    parser.add_argument("--device", default="cpu", help="device for --tokens (default cpu)")
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Build the report and print where it is, how many cells are significant, and the loader warnings.

    Args:
        args: the parsed arguments.
    """
    from caa_eval.report import build_report

    path = build_report(
        args.input,
        args.out,
        alpha=args.alpha,
        seed=args.seed,
        n_resamples=args.n_resamples,
        n_permutations=args.n_permutations,
        primary_test=args.test,
    )
    report = json.loads((path.parent / "report.json").read_text(encoding="utf-8"))
    if args.tokens:
        _add_token_views(args, report, path.parent)
    n_sig = sum(1 for c in report["cells"] if c["significant"])
    print(
        f"wrote {path} (+ report.json, report.html, {len(report['figures'])} figure(s)): {len(report['cells'])} cells, "
        f"{n_sig} of {report['correction']['n_tests']} steered cells significant after Holm"
    )
    for w in report["warnings"]:
        print(f"warning: {w}")
    return 0


def _add_token_views(args: argparse.Namespace, report: dict, out: Path) -> None:
    """Rewrite report.html with per-token views of the first --tokens examples."""
    from caa_eval.analysis.example_tokens import example_token_views
    from caa_eval.report.examples import choose_examples
    from caa_eval.report.html import write_html

    examples = choose_examples(report, args.input, out)
    if not examples:
        print("note: --tokens: the report has no judged open-ended examples to draw")
        return
    views = example_token_views(args.input, examples, args.tokens, args.device)
    write_html(report, out, args.input, views)
    print(f"report.html: {len(views)} per-token view(s)")


def _tokens_need_sweep(args: argparse.Namespace) -> None:
    if args.tokens and not (Path(args.input) / "manifest.json").is_file():
        raise CAAEvalError(f"--tokens needs a sweep folder with manifest.json; {args.input} is not one (drop --tokens)")


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    existing_path("input", kind="any", what="a sweep / run folder or a .csv/.jsonl long table"),
    number("--tokens", ge=0, integer=True, example="2", why="a number of examples"),
    custom("--tokens", "with N > 0, the input is a sweep folder (its manifest names the model)", _tokens_need_sweep),
    device(),
    *COMMON_ARGUMENTS,
]
