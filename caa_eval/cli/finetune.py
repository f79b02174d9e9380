"""`caa-eval finetune`: a LoRA adapter trained toward (`pos`) or away from (`neg`) a behaviour (Table 4)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from caa_eval.finetune.recipe import FinetuneConfig

from caa_eval.cli.arguments import custom, device, existing_path, free, number, parsed
from caa_eval.errors import CAAEvalError

__all__ = ["configure", "run", "OUTPUTS", "ARGUMENTS"]

OUTPUTS = {"out": "folder"}  # checked writable by the dispatcher before the model loads


def configure(parser: argparse.ArgumentParser) -> None:
    from caa_eval.finetune.recipe import FinetuneConfig
    from caa_eval.models import DEFAULT_MODEL

    d = FinetuneConfig()
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"HF path/ID or the alias {DEFAULT_MODEL}")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--behavior", "--behaviour", dest="behaviour", help="a CAA behaviour: train on its A/B generate set"
    )
    src.add_argument("--data", type=Path, help="contrast pairs (JSON list or JSONL with (A)/(B) answers) instead")
    parser.add_argument(
        "--behaviour-label",
        default=None,
        help="with --data: behaviour name to record and whose A/B test set to check against",
    )
    parser.add_argument(
        "--direction",
        required=True,
        choices=["pos", "neg"],
        help="pos: teach the answer matching the behaviour; neg: the non-matching answer",
    )
    parser.add_argument("--out", type=Path, required=True, help="adapter folder to create")
    _training_flags(parser, d)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="save GPU memory (7B+ models)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:1")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 on GPU, float32 on CPU",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="CAA data folder (default: CAA_EVAL_DATA_DIR)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing adapter folder")


def _training_flags(parser: argparse.ArgumentParser, d: FinetuneConfig) -> None:
    from caa_eval.finetune.recipe import MIN_STEPS

    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"passes over the training pairs (default: whole epochs reaching {MIN_STEPS} steps, at least 1)",
    )
    parser.add_argument(
        "--lr", type=float, default=d.lr, help=f"AdamW learning rate, after a short warm-up (default {d.lr:g})"
    )
    parser.add_argument("--lora-r", type=int, default=d.lora_r, help=f"LoRA rank (default {d.lora_r}; alpha = 2r)")
    parser.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 2 * rank)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"items per step (default {d.batch_size})")
    parser.add_argument(
        "--max-steps", type=int, default=d.max_steps, help=f"never train more steps than this (default {d.max_steps})"
    )
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        default=d.holdout_fraction,
        help=f"share of the pairs never trained on, to measure p(match) on (default {d.holdout_fraction:g}; seeded)",
    )
    parser.add_argument(
        "--target-shift",
        type=float,
        default=None,
        help="train until held-out p(match) moved this much the taught way (up to --max-steps), e.g. 0.2",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help=f"with --target-shift: score the held-out slice every N steps (default {d.eval_every})",
    )


def run(args: argparse.Namespace) -> int:
    from caa_eval.finetune.measure import p_match_line, shift_warning, target_line
    from caa_eval.finetune.recipe import FinetuneConfig
    from caa_eval.finetune.train import finetune_to_dir

    cfg = FinetuneConfig(  # validates every setting before the model loads
        direction=args.direction,
        epochs=args.epochs,
        lr=args.lr,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
        holdout_fraction=args.holdout_fraction,
        target_shift=args.target_shift,
        eval_every=args.eval_every,
    )
    behaviour = args.behaviour if args.data is None else args.behaviour_label
    info = finetune_to_dir(
        args.model,
        args.out,
        cfg,
        behaviour=behaviour,
        data_path=args.data,
        data_dir=args.data_dir,
        device=args.device,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.out}: {info['behaviour']} {info['direction']}, {info['n_examples']} items "
        f"({info['n_heldout']} held out), {info['steps']} steps, "
        f"loss {info['first_loss']:.4f} -> {info['final_loss']:.4f} ({info['train_seconds']:.0f} s)"
    )
    print(p_match_line(info))
    if target_line(info):
        print(target_line(info))
    print(
        f"use it: lm_eval --model steered-hf --model_args pretrained={args.model},peft={args.out},"
        f"vector=VECTOR.safetensors,layers=13,multiplier=1 ..."
    )
    warning = shift_warning(info)
    if warning:
        print(f"caa-eval finetune: warning: {warning}", file=sys.stderr)
    return 0


def _check_out(args: argparse.Namespace) -> None:
    from caa_eval.finetune.train import is_complete

    out = args.out.expanduser()
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        what = "an adapter" if is_complete(out) else "files"
        raise CAAEvalError(f"--out {out} already holds {what}; choose a new folder or pass --overwrite")


def _caa_behaviour(name: str) -> str:
    from caa_eval.vocab import caa_behaviour

    return caa_behaviour(name)


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    free("--model", "HF path/ID or the embedded alias", "when the model loads (the load itself)", before_load=False),
    parsed("--behavior", "one of CAA's seven behaviours", _caa_behaviour, dest="behaviour"),
    existing_path("--data", what="contrast pairs with (A)/(B) answers; contents checked when read, before the load"),
    free("--behaviour-label", "any name (CAA's: its A/B test set is held out)"),
    custom("--out", "a new or empty folder (or --overwrite)", _check_out),
    number("--epochs", ge=1, example="1", integer=True),
    number("--lr", gt=0, example="1e-3", why="a learning rate is positive"),
    number("--lora-r", ge=1, example="8", integer=True),
    number("--lora-alpha", gt=0, example="16"),
    number("--batch-size", ge=1, example="4", integer=True),
    number("--max-steps", ge=1, example="300", integer=True),
    number("--holdout-fraction", gt=0, lt=1, example="0.2", why="a share of the pairs: some trained, some held out"),
    number("--target-shift", gt=0, lt=1, example="0.2", why="a change of p(match), itself in (0, 1)"),
    number("--eval-every", ge=1, example="10", integer=True),
    number("--seed", ge=0, example="0", integer=True, why="torch seeds are non-negative"),
    device("--device"),
    existing_path("--data-dir", kind="folder", what="CAA's datasets"),
]
