"""A real headless Chromium for page tests, driven by Selenium with the system's chromedriver.

The network is blocked (host resolver maps every host to nothing, and http/ws URLs are refused through the
DevTools protocol), console messages and network requests are recorded, and scripts can be switched off.
`scripts/report_screenshots.py` uses the same `open_page` / `screenshot` code for the docs' pictures.

Install the browser with the system's package manager: `apt-get install chromium chromium-driver` (Debian);
`.ci/run` does it when missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["browser_paths", "open_page", "console_errors", "network_requests", "screenshot"]

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = ("/usr/bin/chromedriver",)


def browser_paths() -> tuple[str, str] | None:
    """(browser, driver) executables, or None when either is missing."""
    browser = next((p for p in CHROMIUM if os.access(p, os.X_OK)), None) or shutil.which("chromium")
    driver = next((p for p in CHROMEDRIVER if os.access(p, os.X_OK)), None) or shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextlib.contextmanager
def open_page(path: Path, javascript: bool = True, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium showing `path` from file://, with the network blocked.

    Args:
        path: the HTML file.
        javascript: False switches scripts off (the page must still show its tables and figures).
        width: window width in pixels.
        height: window height in pixels.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = browser_paths()
    if paths is None:
        raise RuntimeError("no chromium/chromedriver: apt-get install chromium chromium-driver")
    profile = tempfile.mkdtemp(prefix="caa-eval-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=paths[1]), options=options)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["http://*", "https://*", "ws://*", "wss://*"]})
        if not javascript:
            driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
        driver.get_log("performance")  # drop the start page's own requests
        driver.get_log("browser")
        driver.get(Path(path).resolve().as_uri())
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver: Any) -> list[str]:
    """Console messages at error level since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def network_requests(driver: Any) -> list[str]:
    """URLs the page asked for (from the DevTools performance log), file: and data: included."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def screenshot(driver: Any, out: Path, element_id: str | None = None) -> Path:
    """A PNG of the page top (or of one element, scrolled into view).

    Args:
        driver: the page's driver.
        out: where to write the PNG.
        element_id: an element's id (None = the window as it opens).
    """
    from selenium.webdriver.common.by import By

    out.parent.mkdir(parents=True, exist_ok=True)
    if element_id is None:
        driver.save_screenshot(str(out))
    else:
        element = driver.find_element(By.ID, element_id)
        driver.execute_script("arguments[0].scrollIntoView(true);", element)
        element.screenshot(str(out))
    return out
