"""docs/reliability.md is generated from the declarations the suite runs; it must not drift from them."""

from __future__ import annotations

from _doc import FIX, render
from _harness import REPO


def test_reliability_page_matches_the_declarations():
    """Regenerate the page in memory and compare it with the committed file, line by line."""
    committed = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8").splitlines()
    fresh = render().splitlines()
    differ = [n for n, (a, b) in enumerate(zip(committed, fresh), 1) if a != b]
    where = f"first difference at line {differ[0]}" if differ else f"{len(committed)} vs {len(fresh)} lines"
    assert committed == fresh, f"docs/reliability.md is out of date ({where}); rewrite it with `{FIX}` and commit it"
