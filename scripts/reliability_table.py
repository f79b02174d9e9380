"""Run the reliability suite (issue 14) and write its table of cases and outcomes to docs/reliability.md.

    .venv/bin/python scripts/reliability_table.py [--out docs/reliability.md] [extra pytest args]

The table is rendered by tests/reliability/conftest.py from the run itself (every row is a case that ran),
so the document cannot claim more than the suite checked. Exit code: pytest's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md", help="Markdown file to write")
    args, pytest_args = parser.parse_known_args(argv)
    env = dict(os.environ, CAA_EVAL_RELIABILITY_TABLE=str(args.out.resolve()))
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "reliability",
        "tests/reliability",
        "-p",
        "no:cacheprovider",
        *pytest_args,
    ]
    code = subprocess.call(cmd, cwd=REPO, env=env)
    print(f"wrote {args.out}" if args.out.exists() else f"no table written to {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
