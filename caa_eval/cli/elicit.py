"""`caa-eval elicit`: red-teaming (CAA §9.1): the smallest multiplier at which a behaviour's task score
crosses a threshold, per behaviour, with bootstrap CIs; one table over behaviours (JSON and Markdown)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from caa_eval.cli.arguments import (
    after_load,
    custom,
    device,
    existing_path,
    free,
    number,
    positions,
    vector_file_layers,
)
from caa_eval.errors import CAAEvalError

__all__ = ["configure", "run", "OUTPUTS", "ARGUMENTS"]

OUTPUTS = {"json": "file", "markdown": "file"}  # the dispatcher checks these are writable first


def configure(parser: argparse.ArgumentParser) -> None:
    from caa_eval.models import DEFAULT_MODEL
    from caa_eval.vocab import SITES

    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"HF path/ID or the alias {DEFAULT_MODEL} (default)")
    parser.add_argument(
        "--behavior",
        "--behaviour",
        dest="behaviours",
        nargs="+",
        required=True,
        help="behaviour(s); `all` = CAA's seven",
    )
    parser.add_argument(
        "--vector",
        default="vectors/{behavior}.safetensors",
        help="vector file; with several behaviours a pattern with {behavior} (default vectors/{behavior}.safetensors)",
    )
    parser.add_argument("--layer", type=int, help="steered layer (needed when the file holds several layers)")
    parser.add_argument(
        "--task",
        default="caa_ab_{behavior}",
        help="lm-eval task; {behavior} is replaced by the behaviour's task suffix (default caa_ab_{behavior})",
    )
    parser.add_argument("--metric", help="per-item metric (default: the task's primary metric, p_match for caa_ab)")
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="mean score that counts as triggered (default 0.5)"
    )
    parser.add_argument("--max-multiplier", type=float, default=20.0, help="largest multiplier tried (default 20)")
    parser.add_argument("--grid", type=int, default=8, help="coarse steps from 0 to the maximum (default 8)")
    parser.add_argument("--tolerance", type=float, help="bisect until the bracket is this narrow (default max/100)")
    parser.add_argument("--limit", type=int, help="use only the first N items of each task")
    parser.add_argument("--site", choices=SITES, help="where to add the vector (default: the file's site)")
    parser.add_argument("--positions", default="after_instruction", help="which tokens get the vector (default CAA's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", help="cpu, cuda, cuda:0 … (default: cuda if available)")
    parser.add_argument(
        "--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="model dtype (default: the checkpoint's)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="CAA datasets folder (default: CAA_EVAL_DATA_DIR or the download cache)"
    )
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--json", type=Path, required=True, help="output JSON (rewritten after every behaviour)")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown")


def _behaviours(names: list[str]) -> list[str]:
    from caa_eval.vocab import BEHAVIOURS, behaviour_key

    if [n.lower() for n in names] == ["all"]:
        return list(BEHAVIOURS)
    return [behaviour_key(n) for n in names]


def _layer(sv, requested: int | None, source: str) -> int:
    if requested is not None:
        sv.select([requested], source)
        return requested
    if len(sv.layers) != 1:
        raise CAAEvalError(f"{source} holds layers {sv.layers[0]}..{sv.layers[-1]}; choose one with --layer 13")
    return sv.layers[0]


def _jobs(args: argparse.Namespace) -> list[tuple[str, Path, Any, int, str]]:
    """(behaviour, vector file, vector, layer, task) per behaviour; every input checked before the slow part."""
    from caa_eval.core.vectors import load
    from caa_eval.vocab import task_suffix

    behaviours = _behaviours(args.behaviours)
    jobs = []
    for b in behaviours:
        path = Path(args.vector.replace("{behavior}", b))
        sv = load(path)
        jobs.append((b, path, sv, _layer(sv, args.layer, str(path)), args.task.replace("{behavior}", task_suffix(b))))
    return jobs


def _load_model(args: argparse.Namespace) -> Any:
    import torch

    from caa_eval.lmeval.model import SteeredHFLM

    kwargs = {
        "pretrained": args.model,
        "batch_size": args.batch_size,
        "multiplier": 0,
        "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
    }
    if args.dtype:
        kwargs["dtype"] = args.dtype
    return SteeredHFLM(**kwargs)


def run(args: argparse.Namespace) -> int:
    from caa_eval.analysis.elicit import find_threshold, markdown_table
    from caa_eval.cli.arguments import check_model_layers
    from caa_eval.files import write_atomic
    from caa_eval.lmeval.run import default_task_manager
    from caa_eval.lmeval.scorer import lmeval_scorer

    if logging.getLogger().level > logging.DEBUG:  # lm-eval logs every evaluation; keep the search readable
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
    jobs = _jobs(args)
    lm = _load_model(args)
    check_model_layers(lm.model, [job[3] for job in jobs], "--layer")
    # after the layer check: indexing lm-eval's tasks takes seconds
    manager = default_task_manager({"caa_data_dir": str(args.data_dir)} if args.data_dir else None)
    keys = ("threshold", "max_multiplier", "limit", "positions")
    out: dict[str, Any] = {"model": args.model, **{k: getattr(args, k) for k in keys}, "rows": []}
    table = []
    for b, path, sv, layer, task in jobs:
        t0 = time.perf_counter()
        steering = {"metric": args.metric, "limit": args.limit, "site": args.site, "positions": args.positions}
        score = lmeval_scorer(lm, task, sv, layer, task_manager=manager, **steering)
        result = find_threshold(
            score, args.threshold, args.max_multiplier, args.grid, args.tolerance, n_resamples=args.resamples
        )
        seconds = round(time.perf_counter() - t0, 1)
        result.info = {
            "behaviour": b,
            "task": task,
            "vector": str(path),
            "layer": layer,
            "site": args.site or sv.site,
            "normalization": sv.normalization,
            "seconds": seconds,
        }
        out["rows"].append(result.to_json())
        table.append((b, result))
        write_atomic(args.json, json.dumps(out, indent=1) + "\n")
        print(f"{b} ({task}, layer {layer}, {result.n_items} items, {seconds:.0f} s): {result.summary}")
    text = markdown_table(table)
    if args.markdown:
        write_atomic(args.markdown, text)
    print()
    print(text, end="")
    print(f"wrote {args.json}" + (f" and {args.markdown}" if args.markdown else ""))
    return 0


def _check_behaviours(args: argparse.Namespace) -> None:
    if len(_behaviours(args.behaviours)) > 1 and "{behavior}" not in args.vector:
        raise CAAEvalError(
            "several behaviours need a --vector pattern with {behavior}, e.g. vectors/{behavior}.safetensors"
        )


def _check_vectors(args: argparse.Namespace) -> None:
    if args.layer is not None and args.layer < 0:
        raise CAAEvalError(f"--layer {args.layer}: layers count from 0; write e.g. --layer 13")
    for b in _behaviours(args.behaviours):
        path = Path(args.vector.replace("{behavior}", b))
        if not path.is_file():
            raise CAAEvalError(f"--vector {path}: vector file not found (behaviour {b}); check the path or pattern")
        layers = vector_file_layers(path)
        if layers is None:
            continue
        if args.layer is None and len(layers) != 1:
            raise CAAEvalError(f"--layer: {path} holds layers {layers[0]}..{layers[-1]}; choose one with --layer 13")
        if args.layer is not None and args.layer not in layers:
            raise CAAEvalError(f"--layer {args.layer}: {path} has no vector for it (it holds layers {layers})")


def _check_threshold(args: argparse.Namespace) -> None:
    from caa_eval.vocab import JUDGE_METRIC, primary_metric

    metric = args.metric or primary_metric(args.task) or ""
    if metric != JUDGE_METRIC and not metric.startswith("p_"):
        return  # another metric: its range is unknown here
    low, high = (0.0, 10.0) if metric == JUDGE_METRIC else (0.0, 1.0)
    t = args.threshold
    if not low < t < high:
        raise CAAEvalError(
            f"--threshold {t:g}: {metric} lies in [{low:g}, {high:g}], so a threshold outside ({low:g}, {high:g}) "
            f"is met by every multiplier or by none; write e.g. --threshold {(low + high) / 2:g}"
        )


def _check_tolerance(args: argparse.Namespace) -> None:
    if args.tolerance is not None and not 0 < args.tolerance < args.max_multiplier:
        raise CAAEvalError(
            f"--tolerance {args.tolerance:g}: must be > 0 and below --max-multiplier {args.max_multiplier:g}; "
            f"write e.g. --tolerance {args.max_multiplier / 100:g}"
        )


_LOAD = "when the model loads (the load itself)"
ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    free("--model", "HF path/ID or the embedded alias", _LOAD, before_load=False),
    custom(
        "--behavior",
        "behaviour names or all; several need a --vector pattern with {behavior}",
        _check_behaviours,
        "behaviours",
    ),
    custom("--vector", "one existing vector file per behaviour (pattern with {behavior})", _check_vectors),
    free(
        "--layer",
        ">= 0 and held by every vector file (header only); optional if a file holds one layer",
        "with --vector, before anything loads",
    ),
    after_load("--layer", "exists in the model", "right after the model loads, before any forward pass"),
    free("--task", "a task lm-eval knows; {behavior} is replaced", "when lm-eval builds it", before_load=False),
    free("--metric", "a per-item metric the task logs", "after the first evaluation", before_load=False),
    custom(
        "--threshold",
        "in (0, 1) for probability metrics (p_match, p_correct), (0, 10) for judge_score",
        _check_threshold,
    ),
    number("--max-multiplier", gt=0, example="20", why="the search runs from 0 up to it"),
    number("--grid", ge=1, example="8", integer=True, why="coarse steps"),
    custom("--tolerance", "> 0 and < --max-multiplier", _check_tolerance),
    number("--limit", ge=1, example="50", integer=True, why="items per task"),
    positions("--positions"),
    number("--batch-size", ge=1, example="16", integer=True),
    device("--device"),
    existing_path("--data-dir", kind="folder", what="CAA's datasets"),
    number("--resamples", ge=100, example="2000", integer=True, why="fewer gives no meaningful CI"),
]
