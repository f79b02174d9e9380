"""`caa-eval steerability`: per-item steerability of a run folder or long table (anti-steerable items, letter bias)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from caa_eval.cli.arguments import custom, existing_path, free, number
from caa_eval.errors import CAAEvalError
from caa_eval.files import write_atomic

__all__ = ["configure", "run", "OUTPUTS", "ARGUMENTS"]

OUTPUTS = {"json": "file", "png": "file"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `caa-eval steerability`.

    Args:
        parser: the `caa-eval steerability` parser.
    """
    parser.add_argument("input", type=Path, help="sweep folder, lm_eval --output_path folder or .csv/.jsonl long table")
    parser.add_argument("--json", type=Path, help="write {'steerability': [...], 'steerability_skipped': [...]} here")
    parser.add_argument(
        "--png",
        type=Path,
        help="figure of item propensity curves + slope histogram (one group; several: NAME_01.png, NAME_02.png, …)",
    )
    parser.add_argument(
        "--metrics",
        default="primary",
        help="for run folders: 'primary' (default; every metric of tasks without one), 'all', or a comma-separated list",
    )
    parser.add_argument("--split-by", metavar="COLUMN", help="also report per value of this item column")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")


def _png_paths(png: Path, n: int) -> list[Path]:
    return [png] if n == 1 else [png.with_name(f"{png.stem}_{i:02d}{png.suffix}") for i in range(1, n + 1)]


def run(args: argparse.Namespace) -> int:
    """Print the table and one sentence per group; write --json / --png if asked.

    Args:
        args: the parsed arguments.
    """
    from caa_eval import stats
    from caa_eval.cli.stats import metrics_argument
    from caa_eval.report.steerability import steerability_figure, steerability_sentence, title

    if args.n_resamples < 100:
        raise CAAEvalError("--n-resamples must be at least 100")
    table = stats.load_any(args.input, metrics_argument(args.metrics))
    steer = stats.steerability(table, split_by=args.split_by, seed=args.seed, n_resamples=args.n_resamples)
    print(stats.format_steerability(steer))
    for entry in steer.entries:
        print(f"\n{title(entry)}: {steerability_sentence(entry)}")
    if args.json:
        document = {"input": str(args.input), "steerability": steer.entries, "steerability_skipped": steer.skipped}
        write_atomic(args.json, json.dumps(document, indent=2, allow_nan=False))
        print(f"\nwrote {args.json}")
    groups = [g for g in steer.groups if len(g.fits)]
    if args.png and groups:
        for fit, path in zip(groups, _png_paths(args.png, len(groups))):
            steerability_figure(fit, title(fit.key), path)
            print(f"wrote {path}")
    return 0


def _check_metrics(args: argparse.Namespace) -> None:
    from caa_eval.cli.stats import metrics_argument

    metrics_argument(args.metrics)


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    existing_path("input", kind="any", what="a run folder or a .csv/.jsonl long table"),
    custom("--metrics", "primary, all, or comma-separated metric names", _check_metrics),
    free("--split-by", "a column of the table", "after the table is read, before any statistics", False),
    number("--seed", ge=0, example="0", integer=True, why="numpy seeds are non-negative"),
    number("--n-resamples", ge=100, example="2000", integer=True, why="fewer gives no meaningful CI"),
]
