"""`caa-eval stats`: paired significance tests on a long table or a run folder, printed and written."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from caa_eval.cli.arguments import custom, existing_path, free, number
from caa_eval.errors import CAAEvalError
from caa_eval.files import write_atomic

__all__ = ["configure", "run", "add_common_arguments", "COMMON_ARGUMENTS", "metrics_argument", "OUTPUTS", "ARGUMENTS"]

OUTPUTS = {"json": "file", "csv": "file", "html": "file"}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The statistics options `stats` and `report` share.

    Args:
        parser: the subcommand's parser.
    """
    from caa_eval.stats.tests import TESTS

    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise level for the Holm mark (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed for bootstrap and permutation resampling (default 0)")
    parser.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples per CI (default 2000)")
    parser.add_argument("--n-permutations", type=int, default=9999, help="sign-flip resamples per test (default 9999)")
    parser.add_argument(
        "--test",
        choices=TESTS,
        default="wilcoxon",
        help="test whose p-values are Holm/BH-corrected and marked (default wilcoxon)",
    )


COMMON_ARGUMENTS = [  # the ranges of the options `stats` and `report` share (see caa_eval.cli.arguments)
    number("--alpha", gt=0, lt=1, example="0.05", why="a significance level is a probability"),
    number("--seed", ge=0, example="0", integer=True, why="numpy seeds are non-negative"),
    number("--n-resamples", ge=100, example="2000", integer=True, why="fewer gives no meaningful CI"),
    number("--n-permutations", ge=100, example="9999", integer=True, why="fewer gives no meaningful p-value"),
]


def metrics_argument(value: str) -> str | list[str]:
    """`--metrics`: "primary", "all" or a comma-separated list of metric names (none is refused)."""
    names = value if value in ("primary", "all") else [m.strip() for m in value.split(",") if m.strip()]
    if not names:
        raise CAAEvalError(f"--metrics {value!r} names no metric; write primary, all or e.g. --metrics p_match")
    return names


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `caa-eval stats`.

    Args:
        parser: the `caa-eval stats` parser.
    """
    parser.add_argument("input", type=Path, help="long table (.csv/.jsonl) or a sweep / lm_eval output folder")
    parser.add_argument("--json", type=Path, help="write settings, one row per cell and dose-response here")
    parser.add_argument("--csv", type=Path, help="write one row per cell here")
    parser.add_argument("--html", type=Path, help="write the whole report as one self-contained HTML page here")
    parser.add_argument(
        "--metrics",
        default="primary",
        help="for run folders: 'primary' (default), 'all', or comma-separated metric names",
    )
    parser.add_argument(
        "--split-by",
        metavar="COLUMN",
        help="also report per-item steerability per value of this item column (besides matching_letter)",
    )
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Compute and print the per-cell and dose-response tables; write --json / --csv if asked.

    Args:
        args: the parsed arguments.
    """
    from caa_eval import stats

    table = stats.load_any(args.input, metrics_argument(args.metrics))
    options = {"seed": args.seed, "n_resamples": args.n_resamples}
    cells = stats.paired_stats(
        table, alpha=args.alpha, n_permutations=args.n_permutations, primary_test=args.test, **options
    )
    stats.require_some_baseline(cells)
    dose = stats.compute_dose_response(table, **options)
    stats.warn_no_baseline(cells)
    steer = stats.steerability(table, split_by=args.split_by, **options)
    print(stats.format_cells(cells))
    print()
    print(
        f"Paired against multiplier 0 on the same items; p_holm/p_bh: {args.test} p-values corrected over "
        f"{cells.attrs['n_tests']} cell-vs-0 tests; * = p_holm < {args.alpha}."
    )
    print()
    print("Dose-response (per-item OLS slope of score on multiplier; Page's L trend test, two-sided):")
    print(stats.format_dose(dose))
    print()
    print("Per-item steerability (slope of log-odds / score on multiplier per item; anti = share of slopes < 0):")
    print(stats.format_steerability(steer))
    if args.json:
        document = stats.stats_json(cells, dose, str(args.input), steer)
        write_atomic(args.json, json.dumps(document, indent=2, allow_nan=False))
        print(f"\nwrote {args.json}")
    if args.csv:
        write_atomic(args.csv, cells.to_csv(index=False))
        print(f"wrote {args.csv}")
    if args.html:
        _write_html(args)
        print(f"wrote {args.html}")
    return 0


def _write_html(args: argparse.Namespace) -> None:
    """The report page for this input, built in a scratch folder (figures are inlined, so only the page stays)."""
    import tempfile

    from caa_eval.report import build_report
    from caa_eval.report.html import write_html

    with tempfile.TemporaryDirectory(prefix="caa-eval-html-") as tmp:
        build_report(
            args.input,
            tmp,
            alpha=args.alpha,
            seed=args.seed,
            n_resamples=args.n_resamples,
            n_permutations=args.n_permutations,
            primary_test=args.test,
        )
        report = json.loads((Path(tmp) / "report.json").read_text(encoding="utf-8"))
        page = write_html(report, tmp, args.input, page_dir=args.html.resolve().parent)
        write_atomic(args.html, page.read_text(encoding="utf-8"))


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    existing_path("input", kind="any", what="a .csv/.jsonl long table or a run folder"),
    custom("--metrics", "primary, all, or comma-separated metric names", lambda a: metrics_argument(a.metrics)),
    free("--split-by", "a column of the table", "after the table is read, before any statistics", False),
    *COMMON_ARGUMENTS,
]
