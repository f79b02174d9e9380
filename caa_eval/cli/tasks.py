"""`caa-eval tasks`: the shipped lm-eval tasks, their item counts and where each one's data comes from."""

from __future__ import annotations

import argparse

from caa_eval.cli.arguments import free
from caa_eval.data.catalog import TEMPLATES, list_tasks, template_path
from caa_eval.data.locate import CAA_DATA_ENV, MMLU_DIR_ENV

__all__ = ["configure", "run", "ARGUMENTS"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `caa-eval tasks`.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("--all", action="store_true", help="also list every per-subject MMLU task")
    parser.add_argument(
        "--template-path",
        nargs="?",
        const="ab",
        choices=sorted(TEMPLATES),
        metavar="KIND",
        help="print the absolute path of a base template to `include:` in your own YAML "
        f"({', '.join(TEMPLATES)}; default ab) and exit",
    )
    parser.add_argument("--caa-data-dir", help=f"CAA datasets folder (default: ${CAA_DATA_ENV}, then the user cache)")
    parser.add_argument("--mmlu-dir", help=f"MMLU test CSV folder (default: ${MMLU_DIR_ENV}, then the user cache)")


def run(args: argparse.Namespace) -> int:
    """Print the task table; data problems are listed once each below it, numbered.

    Args:
        args: parsed by `configure`.
    """
    if args.template_path:
        print(template_path(args.template_path))
        return 0
    rows = [
        r
        for r in list_tasks(args.caa_data_dir, args.mmlu_dir)
        if args.all or not (r.group and r.group.startswith(("caa_mmlu_2opt", "caa_tqa_2opt")))
    ]  # 57 subjects / 32 categories each: --all
    problems: list[str] = []
    width = max(len(r.name) for r in rows) + 4
    print(f"{'task':<{width}}{'items':>7}  data")
    for r in rows:
        source = r.source
        if source.startswith("missing: "):
            if source not in problems:
                problems.append(source)
            source = f"missing (see [{problems.index(source) + 1}])"
        elif r.subtasks:
            source = f"group of {r.subtasks} tasks"
        name = f"  {r.name}" if r.group else r.name
        print(f"{name:<{width}}{'-' if r.items is None else r.items:>7}  {source}")
    for k, problem in enumerate(problems, 1):
        print(f"[{k}] {problem}")
    print(
        "\nRun e.g.: lm_eval --model hf --model_args pretrained=PATH --apply_chat_template --tasks caa_ab,caa_mmlu_2opt"
    )
    return 0


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    free("--caa-data-dir", "any path (a missing folder is listed as missing)"),
    free("--mmlu-dir", "any path (a missing folder is listed as missing)"),
]
