"""`caa-eval report`: report.md, report.json and PNG figures for a sweep folder, run folder or long table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from caa_eval.cli.arguments import existing_path
from caa_eval.cli.stats import COMMON_ARGUMENTS, add_common_arguments

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
    n_sig = sum(1 for c in report["cells"] if c["significant"])
    print(
        f"wrote {path} (+ report.json, {len(report['figures'])} figure(s)): {len(report['cells'])} cells, "
        f"{n_sig} of {report['correction']['n_tests']} steered cells significant after Holm"
    )
    for w in report["warnings"]:
        print(f"warning: {w}")
    return 0


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    existing_path("input", kind="any", what="a sweep / run folder or a .csv/.jsonl long table"),
    *COMMON_ARGUMENTS,
]
