"""`caa-eval judge`: score open-ended generations in lm-eval output folders with an LLM judge.

The API key is read from $OPENAI_API_KEY only (a flag would end up in shell history and process lists).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from caa_eval.cli.arguments import custom, existing_path, free, number
from caa_eval.errors import CAAEvalError

__all__ = ["configure", "run", "OUTPUTS", "ARGUMENTS"]

OUTPUTS = {"output_dir": "folder", "summary_json": "file"}  # checked writable by the dispatcher, before any call

log = logging.getLogger("caa_eval.judge")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the judge's arguments.

    Args:
        parser: the `caa-eval judge` parser.
    """
    from caa_eval.judge import BACKENDS, DEFAULT_HF_MODEL, DEFAULT_OPENAI_MODEL, default_cache_path

    parser.add_argument(
        "paths",
        nargs="*",
        metavar="RUN_DIR_OR_SAMPLES",
        help="lm-eval output folder(s) (searched recursively) or samples_*.jsonl file(s)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="openai",
        help="openai: any OpenAI-compatible server; hf: a local HF chat model (offline)",
    )
    parser.add_argument(
        "--judge-model",
        default=None,
        help=f"judge model (default {DEFAULT_OPENAI_MODEL} for openai, {DEFAULT_HF_MODEL} for hf)",
    )
    parser.add_argument(
        "--judge-base-url",
        default=None,
        help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (default $OPENAI_BASE_URL); "
        "the key is read from $OPENAI_API_KEY only",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (openai backend)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request before the client retries")
    parser.add_argument("--max-retries", type=int, default=5, help="client retries on 429/5xx/timeouts (with backoff)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (hf backend)")
    parser.add_argument(
        "--rubrics", default=None, help="YAML file `behaviour: rubric text` overriding or adding rubrics"
    )
    parser.add_argument("--cache", default=None, help=f"score cache file (default {default_cache_path()})")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the score cache")
    parser.add_argument("--output-dir", default=None, help="write judged_*.jsonl here instead of beside the samples")
    parser.add_argument("--summary-json", default=None, help="also write the whole run's summary to this JSON file")
    parser.add_argument(
        "--show-rubrics", action="store_true", help="print the rubrics in use with their hashes and exit"
    )


def run(args: argparse.Namespace) -> int:
    """Judge the given folders/files, print the per-task table; 0 on success (CAAEvalError → exit 2).

    Args:
        args: parsed arguments of configure().
    """
    from caa_eval.files import write_atomic
    from caa_eval.judge import judge_samples, load_rubrics
    from caa_eval.judge.pipeline import DEFAULT_CACHE

    if args.show_rubrics:
        for rubric in load_rubrics(args.rubrics).values():
            print(f"{rubric.behaviour} [{rubric.sha}]\n  {rubric.text}\n")
        return 0
    summary_json = Path(args.summary_json) if args.summary_json else None
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:  # one INFO line per HTTP request is noise here
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
    summary = judge_samples(
        args.paths,
        backend=args.backend,
        judge_model=args.judge_model,
        concurrency=args.concurrency,
        cache_path=None if args.no_cache else (args.cache or DEFAULT_CACHE),
        rubrics=args.rubrics,
        base_url=args.judge_base_url,
        timeout=args.timeout,
        max_retries=args.max_retries,
        batch_size=args.batch_size,
        output_dir=args.output_dir,
        progress=True,
    )
    print(summary.format())
    if summary.usage.missing:
        log.warning("%d items have no score; first error: %s", summary.usage.missing, summary.first_error)
    for t in summary.tasks:
        if t.output_file:
            print(f"wrote {t.output_file}")
    if summary_json is not None:
        write_atomic(summary_json, json.dumps(summary.to_dict(), indent=2) + "\n")
    return 0


def _check_paths(args: argparse.Namespace) -> None:
    if not args.paths and not args.show_rubrics:
        raise CAAEvalError("RUN_DIR_OR_SAMPLES: no input; pass an lm-eval output folder or a samples_*.jsonl file")
    for p in args.paths:
        if not Path(p).expanduser().exists():
            raise CAAEvalError(
                f"RUN_DIR_OR_SAMPLES {p}: not found (no such file or folder); pass an lm-eval output folder or a samples_*.jsonl file"
            )


def _check_cache(args: argparse.Namespace) -> None:
    if args.no_cache and args.cache:
        raise CAAEvalError("--cache and --no-cache contradict each other; pass one")
    if args.cache and Path(args.cache).expanduser().is_dir():
        raise CAAEvalError(f"--cache {args.cache} is a folder; pass a file path (e.g. {args.cache}/judge.sqlite)")


def _check_url(args: argparse.Namespace) -> None:
    url = args.judge_base_url
    if url is not None and not url.startswith(("http://", "https://")):
        raise CAAEvalError(f"--judge-base-url {url}: not an http(s) URL; write e.g. http://127.0.0.1:8000/v1")


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    custom(
        "RUN_DIR_OR_SAMPLES",
        "one or more existing run folders / samples files (none with --show-rubrics)",
        _check_paths,
        dest="paths",
    ),
    free("--judge-model", "a model name the backend knows", "at the first judge call", before_load=False),
    custom("--judge-base-url", "an http:// or https:// URL", _check_url),
    number("--concurrency", ge=1, example="8", integer=True, why="requests in flight"),
    number("--timeout", gt=0, example="60", why="seconds per request"),
    number("--max-retries", ge=0, example="5", integer=True),
    number("--batch-size", ge=1, example="8", integer=True, why="prompts per forward pass"),
    existing_path("--rubrics", what="YAML `behaviour: rubric text`"),
    custom("--cache", "a file path (not a folder); not together with --no-cache", _check_cache),
]
