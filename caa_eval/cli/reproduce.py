"""`caa-eval reproduce run NAME` / `caa-eval reproduce compare RUN --reference NAME` (docs/reproduce.md)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from caa_eval.cli.arguments import custom, existing_path, free, number
from caa_eval.errors import CAAEvalError

__all__ = ["configure", "run", "OUTPUTS", "ARGUMENTS"]

OUTPUTS = {"out": "folder", "json": "file", "md": "file"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `run` and `compare` subcommands.

    Args:
        parser: the `caa-eval reproduce` parser.
    """
    from caa_eval.reproduce import EXPERIMENTS

    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run_p = sub.add_parser("run", help="run a named experiment of the paper (a shipped sweep config)")
    run_p.add_argument("name", help=f"one of {', '.join(EXPERIMENTS)}")
    run_p.add_argument("--out", type=Path, default=None, help="run folder (default outputs/reproduce/NAME)")
    run_p.add_argument("--dry-run", action="store_true", help="print cells, forward passes, GPU memory and time")
    run_p.add_argument("--limit", default=None, help="items per task (MMLU: per subject), or a fraction < 1")
    run_p.add_argument(
        "--vectors",
        nargs="+",
        default=["extract"],
        metavar="SOURCE",
        help="extract (default: from the generate sets) or caa DIR (CAA's published raw vectors/ folder)",
    )
    run_p.add_argument("--model", default=None, help="another model, for a smoke run (e.g. smollm2-135m-instruct)")
    run_p.add_argument("--behaviours", "--behaviors", default=None, help="a subset, e.g. sycophancy,refusal")
    cmp_p = sub.add_parser("compare", help="verdict: a run folder or long table against CAA's published numbers")
    cmp_p.add_argument("run_dir", type=Path, help="a reproduce/sweep run folder or a long table CSV/JSONL")
    cmp_p.add_argument("--reference", required=True, help=f"the experiment: {', '.join(EXPERIMENTS)}")
    cmp_p.add_argument("--tolerance", type=float, default=None, help="default 0.05 (probabilities), 0.5 (0-10 scores)")
    cmp_p.add_argument("--json", type=Path, default=None, help="write the verdict as JSON")
    cmp_p.add_argument("--md", type=Path, default=None, help="write the verdict as markdown")
    cmp_p.add_argument("--all", action="store_true", help="list reproduced cells too, not only the differing ones")
    cmp_p.add_argument("--seed", type=int, default=0, help="bootstrap seed of our CIs")


def _limit(value: str | None) -> int | float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    if not x > 0 or (x >= 1 and x != int(x)):
        raise CAAEvalError(f"--limit {value!r}: give a whole number of items, or a fraction < 1")
    return int(x) if x >= 1 else x


def _caa_vectors(values: list[str]) -> Path | None:
    if values == ["extract"]:
        return None
    if len(values) == 2 and values[0] == "caa":
        return Path(values[1])
    raise CAAEvalError(f"--vectors {' '.join(values)}: write --vectors extract or --vectors caa DIR")


def _run(args: argparse.Namespace) -> int:
    from caa_eval.reproduce import get_experiment
    from caa_eval.reproduce.run import run_experiment

    exp = get_experiment(args.name)
    behaviours = [b.strip() for b in args.behaviours.split(",") if b.strip()] if args.behaviours else None
    run_experiment(
        exp,
        out=args.out,
        limit=_limit(args.limit),
        model=args.model,
        behaviours=behaviours,
        caa_vectors=_caa_vectors(args.vectors),
        dry_run=args.dry_run,
    )
    return 0


def _compare(args: argparse.Namespace) -> int:
    from caa_eval import reproduce, stats

    exp = reproduce.get_experiment(args.reference)
    if args.tolerance is not None and not args.tolerance >= 0:
        raise CAAEvalError(f"--tolerance {args.tolerance}: give a number >= 0")
    if not args.run_dir.exists():
        raise CAAEvalError(f"{args.run_dir}: no such run folder or table")
    reference = reproduce.reference_cells(exp)
    cmp = reproduce.compare_table(stats.load_any(args.run_dir), exp, reference, args.tolerance, args.seed)
    if cmp.compared == 0:
        raise CAAEvalError(
            f"{args.run_dir} has none of the {len(reference)} cells of {exp.name} "
            f"(task {exp.task}, metric {exp.metric}); run `caa-eval reproduce run {exp.name}` first"
        )
    for line in reproduce.text_lines(cmp, all_cells=args.all):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(reproduce.as_json(cmp), indent=2) + "\n", encoding="utf-8")
    if args.md is not None:
        args.md.write_text(reproduce.markdown(cmp), encoding="utf-8")
    return 0 if cmp.reproduced == cmp.compared else 1


def run(args: argparse.Namespace) -> int:
    """Dispatch to `run` or `compare`; bad input raises CAAEvalError (one line, exit 2).

    Args:
        args: the parsed `caa-eval reproduce` arguments.
    """
    return _run(args) if args.action == "run" else _compare(args)


def _check_experiment(name: str, flag: str | None) -> None:
    from caa_eval.reproduce import get_experiment

    try:
        get_experiment(name)
    except CAAEvalError as exc:
        raise CAAEvalError(f"{flag}: {exc}" if flag else str(exc)) from None


def _check_vectors(args: argparse.Namespace) -> None:
    folder = _caa_vectors(args.vectors)
    if folder is not None and not folder.is_dir():
        raise CAAEvalError(f"--vectors caa {folder}: no such folder; pass CAA's vectors/ folder")


def _check_behaviours(args: argparse.Namespace) -> None:
    from caa_eval.vocab import caa_behaviour

    for name in (args.behaviours or "").split(","):
        if name.strip():
            try:
                caa_behaviour(name)
            except CAAEvalError as exc:
                raise CAAEvalError(f"--behaviours: {exc}") from None


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    custom("name", "one of the shipped experiments", lambda a: _check_experiment(a.name, None)),
    custom("--limit", "a whole count >= 1 or a fraction in (0, 1)", lambda a: _limit(a.limit)),
    custom("--vectors", "extract, or caa DIR with DIR an existing folder", _check_vectors),
    free("--model", "HF path/ID or the embedded alias", "when the model loads (the load itself)", before_load=False),
    custom("--behaviours", "comma-separated CAA behaviours", _check_behaviours),
    existing_path("run_dir", kind="any", what="a run folder or a long table"),
    custom("--reference", "one of the shipped experiments", lambda a: _check_experiment(a.reference, "--reference")),
    number("--tolerance", ge=0, example="0.05", why="an absolute difference"),
    number("--seed", ge=0, example="0", integer=True, why="numpy seeds are non-negative"),
]
