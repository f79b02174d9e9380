"""`caa-eval eval …` = `lm_eval …` with steered-hf registered, for installs without the .pth startup hook."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:  # the arguments are lm_eval's own
    pass


def run(argv: list[str]) -> int:
    from caa_eval.errors import CAAEvalError
    from caa_eval.lmeval.register import ensure_registered

    ensure_registered()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    except CAAEvalError as exc:
        print(f"caa-eval eval: error: {exc}", file=sys.stderr)
        return 2
    return 0
