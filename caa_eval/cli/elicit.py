"""`caa-eval elicit`: red-teaming (CAA §9.1): the smallest multiplier at which a behaviour's task score
crosses a threshold, per behaviour, with bootstrap CIs; one table over behaviours (JSON and Markdown)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from caa_eval.errors import CAAEvalError

__all__ = ["configure", "run", "OUTPUTS"]

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
    parser.add_argument("--dtype", help="model dtype (default: the checkpoint's)")
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
    if len(behaviours) > 1 and "{behavior}" not in args.vector:
        raise CAAEvalError(
            "several behaviours need a --vector pattern with {behavior}, e.g. vectors/{behavior}.safetensors"
        )
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
    from caa_eval.files import write_atomic
    from caa_eval.lmeval.run import default_task_manager
    from caa_eval.lmeval.scorer import lmeval_scorer

    if logging.getLogger().level > logging.DEBUG:  # lm-eval logs every evaluation; keep the search readable
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
    jobs = _jobs(args)
    manager = default_task_manager({"caa_data_dir": str(args.data_dir)} if args.data_dir else None)
    lm = _load_model(args)
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
