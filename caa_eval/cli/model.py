"""`caa-eval model prepare|path`: the embedded default model."""

from __future__ import annotations

import argparse

from caa_eval.models import prepare

__all__ = ["configure", "run", "ARGUMENTS"]

ARGUMENTS: list = []  # flags only (argparse)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_command", required=True)
    p = sub.add_parser("prepare", help="convert the embedded SmolLM2 GGUF into an HF folder (idempotent)")
    p.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    sub.add_parser("path", help="print the folder of the embedded model (prepares it if needed)")


def run(args: argparse.Namespace) -> int:
    print(prepare(force=getattr(args, "force", False)))
    return 0
