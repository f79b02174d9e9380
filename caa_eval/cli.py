"""`caa-eval` command line: one subcommand per step of the data flow, each implemented in its module.

Modules are imported only for the subcommand that runs, so `caa-eval stats` never pays for torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from caa_eval import __version__
from caa_eval.errors import CAAEvalError

# subcommand -> (module, configure function, run function, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "model": ("caa_eval.models", "configure_cli", "run_cli", "prepare the embedded default model (SmolLM2-135M-Instruct)"),
    "extract": ("caa_eval.extract", "configure_cli", "run_cli", "extract CAA steering vectors from contrast pairs"),
    "normalize": ("caa_eval.vectors", "configure_normalize_cli", "run_normalize_cli", "rescale several behaviours' vectors to their mean norm per layer"),
    "inspect": ("caa_eval.vectors", "configure_inspect_cli", "run_inspect_cli", "print a vector file's metadata and norms"),
    "eval": ("caa_eval.lm", "configure_cli", "run_cli", "run lm_eval with steered-hf registered (arguments are passed through)"),
    "demo": ("caa_eval.demo", "configure_cli", "run_cli", "end-to-end demo on the embedded model"),
    "tasks": ("caa_eval.data", "configure_tasks_cli", "run_tasks_cli", "list the shipped tasks and where their data comes from"),
    "data": ("caa_eval.data", "configure_data_cli", "run_data_cli", "download / locate the CAA datasets and MMLU"),
    "judge": ("caa_eval.judge", "configure_cli", "run_cli", "score open-ended generations with an LLM judge"),
    "stats": ("caa_eval.stats", "configure_cli", "run_cli", "paired significance tests on a long table of per-item scores"),
    "report": ("caa_eval.report", "configure_cli", "run_cli", "markdown/JSON/PNG report for a sweep or run folder"),
    "sweep": ("caa_eval.sweep", "configure_cli", "run_cli", "run layers x multipliers x sites x tasks in one process"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caa-eval", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"caa-eval {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, _, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is None or command not in COMMANDS:
        if command is not None:
            top.error(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
        top.parse_args(argv)
        top.print_help()
        return 0
    idx = argv.index(command)
    verbose = any(a in ("-v", "--verbose") for a in argv[:idx])
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module_name, configure_name, run_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"caa-eval {command}", description=help_text)
    getattr(module, configure_name)(parser)
    if command == "eval":  # everything after `eval` belongs to lm_eval
        return int(getattr(module, run_name)(argv[idx + 1 :]) or 0)
    args = parser.parse_args(argv[idx + 1 :])
    try:
        return int(getattr(module, run_name)(args) or 0)
    except CAAEvalError as exc:
        print(f"caa-eval {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"caa-eval {command}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
