"""Screenshots of a report.html for the docs, made with the browser tests' own code (tests/helpers/browser.py):
the top of the page and the examples section, in headless Chromium with the network blocked.

    python scripts/report_screenshots.py outputs/report_smollm2/report/report.html docs/img/report_html
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.browser import console_errors, open_page, screenshot  # noqa: E402


def main(page: str, prefix: str) -> None:
    with open_page(Path(page), width=1280, height=1000) as driver:
        top = screenshot(driver, Path(f"{prefix}_top.png"))
        examples = screenshot(driver, Path(f"{prefix}_examples.png"), "examples")
        errors = console_errors(driver)
    print(f"wrote {top} and {examples}; console errors: {errors or 'none'}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
