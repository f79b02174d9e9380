"""`caa-eval data`: download the CAA datasets and MMLU test CSVs, and show where the tasks will find them."""

from __future__ import annotations

import argparse
from pathlib import Path

from caa_eval.cli.arguments import custom, free
from caa_eval.data import download as dl
from caa_eval.data.locate import CAA_DATA_ENV, MMLU_DIR_ENV, locate_caa_data, locate_mmlu
from caa_eval.errors import CAAEvalError
from caa_eval.paths import cache_dir

__all__ = ["configure", "run", "OUTPUTS", "ARGUMENTS"]

OUTPUTS = {"dest": "folder"}  # checked writable by the dispatcher before anything is downloaded


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `caa-eval data download` and `caa-eval data status`.

    Args:
        parser: the subcommand's parser.
    """
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    get = sub.add_parser("download", help="fetch the CAA datasets and MMLU test CSVs (pinned commits, sha256-checked)")
    get.add_argument(
        "--dest", help="root folder receiving caa/ and mmlu/test/ (default: the user cache, where tasks look last)"
    )
    get.add_argument(
        "--base-url", help="mirror with the same layout ({URL}/caa/<path>, {URL}/mmlu/test/<file>); file:// works"
    )
    get.add_argument("--only", choices=dl.DATASETS, help="fetch one dataset only")
    get.add_argument("--force", action="store_true", help="download again even if the files verify")
    get.add_argument("--no-progress", action="store_true", help="no progress bar")
    status = sub.add_parser("status", help="where the tasks will find their data; --verify checks sha256 of every file")
    status.add_argument("--verify", action="store_true", help="hash every file against the recorded sha256")
    status.add_argument("--caa-data-dir", help=f"CAA datasets folder (default: ${CAA_DATA_ENV}, then the user cache)")
    status.add_argument("--mmlu-dir", help=f"MMLU test CSV folder (default: ${MMLU_DIR_ENV}, then the user cache)")


def _download(args: argparse.Namespace) -> int:
    what = (args.only,) if args.only else dl.DATASETS
    dl.download(what, dest=args.dest, base_url=args.base_url, force=args.force, progress=not args.no_progress)
    if not args.dest:
        print(f"Downloaded and verified into {cache_dir() / 'data'} (found by the tasks automatically).")
        return 0
    root = Path(args.dest).expanduser().resolve()
    print("Downloaded and verified. Point the tasks at this copy with:")
    if "caa" in what:
        print(f"  export {CAA_DATA_ENV}={root / 'caa'}")
    if "mmlu" in what:
        print(f"  export {MMLU_DIR_ENV}={root / 'mmlu' / 'test'}")
    return 0


def _status(args: argparse.Namespace) -> int:
    bad = 0
    for kind, locate, explicit in (("caa", locate_caa_data, args.caa_data_dir), ("mmlu", locate_mmlu, args.mmlu_dir)):
        try:
            loc = locate(explicit)
        except CAAEvalError as exc:
            print(f"{kind}: missing: {exc}")
            bad += 1
            continue
        line = f"{kind}: {loc.path} ({loc.source})"
        if args.verify:
            found = dl.verify_dir(kind, loc.path)
            counts = {s: sum(1 for v in found.values() if v == s) for s in ("ok", "missing", "modified")}
            line += f": {counts['ok']} ok, {counts['missing']} missing, {counts['modified']} modified"
            bad += counts["missing"] + counts["modified"]
            for rel, s in found.items():
                if s != "ok":
                    print(f"  {s}: {rel}")
        print(line)
    return 1 if bad else 0


def run(args: argparse.Namespace) -> int:
    """Run `download` or `status`; status exits 1 when data is missing or does not verify.

    Args:
        args: parsed by `configure`.
    """
    if args.action == "download":
        return _download(args)
    if args.action == "status":
        return _status(args)
    print("usage: caa-eval data {download,status} [--help]")
    return 2


def _check_base_url(args: argparse.Namespace) -> None:
    url = getattr(args, "base_url", None)
    if url is not None and not url.startswith(("http://", "https://", "file://")):
        raise CAAEvalError(f"--base-url {url}: not an http(s):// or file:// URL; write e.g. file:///srv/mirror")


ARGUMENTS = [  # each argument's range, checked by the dispatcher before run() (see caa_eval.cli.arguments)
    custom("--base-url", "an http://, https:// or file:// URL", _check_base_url),
    free("--caa-data-dir", "any path (a missing folder is reported by status, exit 1)"),
    free("--mmlu-dir", "any path (a missing folder is reported by status, exit 1)"),
]
