"""`caa-eval sweep CONFIG.yaml`: run (or with --dry-run, plan) a sweep; flags override config keys."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from caa_eval.cli.arguments import custom, existing_path, free
from caa_eval.errors import CAAEvalError

__all__ = ["configure", "overrides", "run", "ARGUMENTS", "OUTPUTS"]

OUTPUTS = {"out": "folder"}  # checked writable by the dispatcher (a config's `output` is checked by run_sweep)

_LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def _split(values: Sequence[str] | None) -> list[str] | None:
    """`["10,13", "16"]` -> `["10", "13", "16"]`; None when the flag was not given."""
    if not values:
        return None
    return [v.strip() for raw in values for v in raw.split(",") if v.strip()]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the sweep's arguments.

    Args:
        parser: the `caa-eval sweep` parser.
    """
    parser.add_argument("config", type=Path, help="sweep YAML (see examples/sweep_smollm2.yaml and docs/sweeps.md)")
    parser.add_argument("--out", default=None, help="run folder (overrides `output`)")
    parser.add_argument("--model", default=None, help="HF path/ID or smollm2-135m-instruct (overrides `model`)")
    parser.add_argument("--limit", default=None, help="items per task (MMLU: per subject), or a fraction < 1")
    parser.add_argument("--layers", nargs="+", default=None, help="e.g. 13 | 10,13,16 | 10-14 (overrides `layers`)")
    parser.add_argument(
        "--multipliers",
        nargs="+",
        default=None,
        help="e.g. --multipliers -1 0 1 or --multipliers=-1,0,1 (0 is always added)",
    )
    parser.add_argument(
        "--behaviours", "--behaviors", nargs="+", default=None, help="CAA behaviour names (overrides `behaviours`)"
    )
    parser.add_argument(
        "--tasks", nargs="+", default=None, help="task names/templates, e.g. caa_ab_{behaviour},caa_mmlu_2opt"
    )
    parser.add_argument("--sites", nargs="+", default=None, help="residual,mlp,attn (overrides `sites`)")
    parser.add_argument("--batch-size", default=None, help="lm-eval batch size (overrides `batch_size`)")
    parser.add_argument("--no-report", action="store_true", help="do not build RUN_DIR/report at the end")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the cells (done / to run) and the vectors to extract"
    )
    parser.add_argument(
        "--shard",
        default=None,
        help="i/n: run shard i (0..n-1) of the cells into a run folder shared with the other shards; "
        "auto (the default under accelerate launch / torchrun): RANK of WORLD_SIZE",
    )


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config keys set by flags (None = flag not given, the config's value stays).

    Args:
        args: the parsed `caa-eval sweep` arguments.
    """
    over: dict[str, Any] = {
        "output": args.out,
        "limit": args.limit,
        "model": getattr(args, "model", None),
        "layers": _split(args.layers),
        "multipliers": _split(args.multipliers),
        "behaviours": _split(args.behaviours),
        "tasks": _split(args.tasks),
        "sites": _split(getattr(args, "sites", None)),
    }
    if getattr(args, "batch_size", None) is not None:
        bs = args.batch_size
        over["batch_size"] = int(bs) if str(bs).isdigit() else bs
    if getattr(args, "no_report", False):
        over["report"] = False
    return over


def run(args: argparse.Namespace) -> int:
    """Load the config (with flag overrides) and run the sweep; config errors surface as CAAEvalError.

    Args:
        args: the parsed `caa-eval sweep` arguments.
    """
    from caa_eval.sweep import load_config, run_sweep
    from caa_eval.sweep.shard import parse_shard, shard_from_env

    shard = parse_shard(args.shard) if getattr(args, "shard", None) is not None else shard_from_env()
    cfg = load_config(args.config, overrides(args))
    if shard is not None and shard == shard_from_env():  # started by accelerate launch / torchrun
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        for var in _LAUNCHER_VARS:  # shards are independent: lm-eval must not join them into one process group
            os.environ.pop(var, None)
        if cfg.device in (None, "cuda"):
            import torch

            if torch.cuda.is_available():  # one GPU per launched process
                cfg = dataclasses.replace(cfg, device=f"cuda:{local_rank}")
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        for name in ("lm_eval", "lm-eval", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    run_sweep(cfg, dry_run=args.dry_run, progress=True, shard=shard)
    return 0


_FLAG_OF_KEY = {
    "output": "--out",
    "limit": "--limit",
    "model": "--model",
    "layers": "--layers",
    "multipliers": "--multipliers",
    "behaviours": "--behaviours",
    "tasks": "--tasks",
    "sites": "--sites",
    "batch_size": "--batch-size",
}


def _check_config(args: argparse.Namespace) -> None:
    """The whole config with the flags applied (YAML only, no model): an error a flag caused names the flag."""
    import re

    from caa_eval.sweep import load_config

    over = overrides(args)
    try:
        cfg = load_config(args.config, over)
        if not args.dry_run:  # what run_sweep checks first, here before its notes reach the terminal
            from caa_eval.files import check_output
            from caa_eval.models import resolve_device

            check_output(cfg.output, "--out" if args.out else "output", folder=True)
            if cfg.vectors_dir is not None:
                check_output(cfg.vectors_dir, "vectors", folder=True)
            resolve_device(cfg.device)
    except CAAEvalError as exc:
        key = re.search(r"key '(\w+)'", str(exc))
        if key and over.get(key.group(1)) is not None and key.group(1) in _FLAG_OF_KEY:
            raise CAAEvalError(f"{_FLAG_OF_KEY[key.group(1)]}: {exc}") from None
        raise


def _check_shard(args: argparse.Namespace) -> None:
    from caa_eval.sweep.shard import parse_shard

    if args.shard is not None:
        parse_shard(args.shard)


_WITH_CONFIG = "with the config (load_config, YAML only), before any model loads"
ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    existing_path("config", what="a sweep YAML"),
    custom("config", "its keys validate, with the flags below applied", _check_config),
    free("--model", "HF path/ID or the embedded alias", "when the model loads (the load itself)", before_load=False),
    free("--limit", "a whole count >= 1 or a fraction in (0, 1)", _WITH_CONFIG),
    free("--layers", "layer specs >= 0 (13, 10,13,16, 10-14)", _WITH_CONFIG),
    free("--multipliers", "finite numbers", _WITH_CONFIG),
    free("--behaviours", "behaviour names (CAA's or the config's own)", _WITH_CONFIG),
    free("--tasks", "task names / templates with {behaviour}", _WITH_CONFIG),
    free("--sites", "residual, mlp, attn", _WITH_CONFIG),
    free("--batch-size", "an integer >= 1, auto or auto:N", _WITH_CONFIG),
    custom("--shard", "i/n with 0 <= i < n, or auto", _check_shard),
]
