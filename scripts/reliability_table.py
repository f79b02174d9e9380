"""Write docs/reliability.md from the declarations the reliability suite runs (issues 14, 24, 26).

    python scripts/reliability_table.py [--out docs/reliability.md]

The page is rendered by tests/reliability/_doc.py from the CLI modules' argument rules, the suite's bad-input
cases and its fault tests' docstrings, without running anything; tests/reliability/test_reliability_doc.py
regenerates it in memory and fails when the committed file differs. The observed outcomes are in the suite's
own run: `pytest -m reliability tests/reliability` (set CAA_EVAL_RELIABILITY_TABLE=FILE to also write them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md", help="Markdown file to write")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(REPO), str(REPO / "tests" / "reliability")]
    import _doc

    args.out.write_text(_doc.render(), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
