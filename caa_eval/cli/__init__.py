"""`caa-eval` command line: one subcommand per step of the data flow, one module per subcommand here.

Modules are imported only for the subcommand that runs, so `caa-eval stats` never pays for torch.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
import traceback

from caa_eval import __version__
from caa_eval.cli.arguments import run_checks
from caa_eval.errors import CAAEvalError

# subcommand -> (module under caa_eval.cli with configure(parser) and run(args), one-line help). A module
# declares ARGUMENTS (a list of caa_eval.cli.arguments.Rule: each argument's range and its check) and may declare
# OUTPUTS = {dest: "file" | "folder"}; both are checked before run() loads anything (see cli/arguments.py).
COMMANDS: dict[str, tuple[str, str]] = {
    "model": ("model", "prepare the embedded default model (SmolLM2-135M-Instruct)"),
    "data": ("data", "download / locate the CAA datasets and MMLU"),
    "tasks": ("tasks", "list the shipped tasks and where their data comes from"),
    "extract": ("extract", "extract CAA steering vectors from contrast pairs"),
    "import-caa": ("import_caa", "convert CAA's published .pt vectors into caa-eval vector files"),
    "normalize": ("normalize", "rescale several behaviours' vectors to their mean norm per layer (CAA)"),
    "inspect": ("inspect", "print a vector file's metadata and norms"),
    "convert": ("convert", "write a vector for llama.cpp (GGUF), lm-eval steered, repeng or CAA"),
    "parity": ("parity", "run the same items through steered-hf, lm-eval steered and llama.cpp; compare"),
    "eval": ("eval", "run lm_eval with steered-hf registered (arguments are passed through)"),
    "judge": ("judge", "score open-ended generations with an LLM judge"),
    "stats": ("stats", "paired significance tests on a long table of per-item scores"),
    "steerability": ("steerability", "per-item steerability: anti-steerable items, letter bias, item curves"),
    "report": ("report", "markdown/JSON/PNG report for a sweep or run folder"),
    "sweep": ("sweep", "run layers x multipliers x sites x tasks in one process"),
    "demo": ("demo", "end-to-end demo on the embedded model"),
    "tokens": ("tokens", "per-token cosine with a steering vector, as JSON + HTML (CAA §8.1)"),
    "similarity": ("similarity", "cosine of vectors across layers or between two vector files (CAA §8.2, §8.3)"),
    "elicit": ("elicit", "smallest multiplier that triggers a behaviour, with CIs (red-teaming, §9.1)"),
    "calibrate": ("calibrate", "multiplier for a target KL on neutral prompts; norm fraction and KL (§9.1)"),
    "finetune": ("finetune", "LoRA-finetune a model toward or away from a behaviour (Table 4)"),
    "reproduce": ("reproduce", "run a paper experiment and compare it with CAA's published results"),
}


DESCRIPTION = (
    "Steer a language model with Contrastive Activation Addition (CAA) and measure the effect inside "
    "lm-evaluation-harness: extract steering vectors from contrast pairs, evaluate steered models on A/B, MMLU "
    "and open-ended tasks, sweep layers x multipliers x sites, judge open answers, and get a report of which "
    "effects are statistically significant. Start with `caa-eval demo`."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caa-eval", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"caa-eval {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
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
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(f"caa_eval.cli.{module_name}")
    if command == "eval":  # everything after `eval` belongs to lm_eval
        return int(module.run(argv[idx + 1 :]) or 0)
    parser = argparse.ArgumentParser(prog=f"caa-eval {command}", description=help_text)
    module.configure(parser)
    args = parser.parse_args(argv[idx + 1 :])
    try:
        run_checks(getattr(module, "ARGUMENTS", []), args)
        _check_outputs(args, getattr(module, "OUTPUTS", {}), parser)
        return int(module.run(args) or 0)
    except CAAEvalError as exc:  # bad input: one line, exit 2 (the traceback only with -v)
        if verbose:
            traceback.print_exc()
        print(f"caa-eval {command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if verbose or exc.errno not in _DISK_ERRORS:
            raise  # anything else is a bug: the traceback is the report
        print(
            f"caa-eval {command}: error: cannot write {exc.filename or 'output'} ({exc.strerror}); finished "
            "work is kept: free space or fix the location, then rerun to resume",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"caa-eval {command}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # the machine's state, not a bug and not bad input


def _check_outputs(args: argparse.Namespace, outputs: dict[str, str], parser: argparse.ArgumentParser) -> None:
    """Every output location a command declares, checked before its model load or paid call."""
    from caa_eval.files import check_output

    flags = {a.dest: a.option_strings[0] if a.option_strings else a.dest for a in parser._actions}
    for dest, kind in outputs.items():
        value = getattr(args, dest, None)
        if value is not None:
            check_output(value, flags.get(dest, "--" + dest.replace("_", "-")), folder=kind == "folder")


if __name__ == "__main__":
    sys.exit(main())
