"""`caa-eval eval …` = `lm_eval …` with steered-hf registered, for installs without the .pth startup hook."""

from __future__ import annotations

import argparse
import sys

from caa_eval.cli.arguments import free

__all__ = ["configure", "run", "ARGUMENTS"]

_INIT = "SteeredHFLM.__init__, before the model loads"
ARGUMENTS = [  # lm_eval's parser owns the flags; these are steered-hf's --model_args (tested as steer-* cases)
    free("vector=", "an existing vector file (loaded and checked before the model)", _INIT),
    free("layers=", "a layer spec (syntax); every layer in the model", _INIT + "; range right after it"),
    free("multiplier=", "a finite number (needs vector= unless 0)", _INIT),
    free("site=", "residual, mlp or attn", _INIT),
    free("positions=", "a position rule (after_instruction, all, generated, span:A:B, regex:P)", _INIT),
    free("allow_fingerprint_mismatch=", "true or false", _INIT),
]


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
