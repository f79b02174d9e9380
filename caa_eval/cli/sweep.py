"""`caa-eval sweep CONFIG.yaml`: run (or with --dry-run, plan) a sweep; flags override config keys."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["configure", "overrides", "run"]

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
