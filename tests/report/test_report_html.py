"""report.html in a real headless Chromium (issue 23): opened from file:// with the network blocked, no console
errors, every figure drawn, the headline table sorts and filters, the examples show the planted generations,
and without JavaScript the tables and figures are still there. Plus the page's content checked offline.

A missing browser skips these with one line; under CI=true it fails (.ci/run installs chromium)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from caa_eval import cli
from tests.helpers.browser import browser_paths, console_errors, network_requests, open_page, screenshot
from tests.helpers.sweep_data import write_caa_layout

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SHOTS = Path(os.environ.get("CAA_EVAL_SCREENSHOTS", "")) if os.environ.get("CAA_EVAL_SCREENSHOTS") else None


def _needs_browser() -> None:
    if browser_paths() is None:
        message = "no chromium + chromedriver: apt-get install chromium chromium-driver"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _plant(run_dir: Path) -> dict[str, str]:
    """Replace every judged answer by a recognisable text; returns {text: score} of what was planted."""
    planted = {}
    for path in sorted(run_dir.glob("cells/*/judged_*.jsonl")):
        cell = json.loads((path.parent / "cell.json").read_text())
        lines = []
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            rec["answer"] = f"PLANTED answer at m={cell.get('multiplier', 0)} for item {rec['doc_id']}"
            planted[rec["answer"]] = rec["score"]
            lines.append(json.dumps(rec))
        path.write_text("\n".join(lines) + "\n")
    return planted


@pytest.fixture(scope="module")
def html_run(tiny_model_dir, tmp_path_factory):
    """A tiny judged sweep (A/B + open-ended, multipliers -1/0/+1), answers planted, report rebuilt."""
    root = tmp_path_factory.mktemp("html")
    data = write_caa_layout(root / "caa", ("sycophancy", "refusal"))
    keys = {
        "model": str(tiny_model_dir),
        "behaviours": ["sycophancy", "refusal"],
        "layers": [1],
        "multipliers": [-1, 0, 1],
        "tasks": ["caa_ab_{behaviour}", "caa_open_{behaviour}"],
        "limit": 3,
        "batch_size": 8,
        "device": "cpu",
        "output": str(root / "run"),
        "judge": {"backend": "hf", "model": str(tiny_model_dir), "cache": False, "batch_size": 4},
        "gen_kwargs": {"max_gen_toks": 8},
    }
    (root / "s.yaml").write_text(yaml.safe_dump(keys))
    old = os.environ.get("CAA_EVAL_DATA_DIR")
    os.environ["CAA_EVAL_DATA_DIR"] = str(data)
    try:
        assert cli.main(["sweep", str(root / "s.yaml")]) == 0
    finally:
        if old is None:
            os.environ.pop("CAA_EVAL_DATA_DIR", None)
        else:
            os.environ["CAA_EVAL_DATA_DIR"] = old
    run_dir = root / "run"
    planted = _plant(run_dir)
    assert cli.main(["report", str(run_dir)]) == 0
    return run_dir, planted


def test_page_is_self_contained_and_in_the_issue_order(html_run):
    run_dir, planted = html_run
    page = (run_dir / "report" / "report.html").read_text()
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert "http://" not in page and "https://" not in page and "<link" not in page
    markdown = (run_dir / "report" / "report.md").read_text()
    assert page.count("data:image/png;base64,") == markdown.count("](") >= len(report["figures"]) > 0
    assert "not found]" not in page and page.count("<img ") == page.count('<img src="data:image/png;base64,')
    order = [page.index(f'id="{s}"') for s in ("provenance", "headline", "examples")]
    assert order == sorted(order)
    assert page.index('id="headline"') < page.index('id="figures"') < page.index('id="examples"')
    assert page.count('<tr data-behaviour="') == len(report["cells"])
    assert str(tiny_model_dir_name(run_dir)) in page  # provenance names the model
    shown = [text for text in planted if text in page]
    assert len(shown) >= 3  # a question's answers at -1, 0 and +1 side by side


def tiny_model_dir_name(run_dir: Path) -> str:
    return json.loads((run_dir / "manifest.json").read_text())["config"]["model"]


def test_stats_html_writes_the_same_page_elsewhere(html_run, tmp_path):
    run_dir, planted = html_run
    out = tmp_path / "page" / "stats.html"
    assert cli.main(["stats", str(run_dir), "--html", str(out), "--n-resamples", "200"]) == 0
    page = out.read_text()
    assert 'id="headline-table"' in page and any(text in page for text in planted)
    link = page.split('Full samples: <a href="')[1].split('"')[0]
    assert (out.parent / link).resolve().is_file()  # links to the samples work from where the page is


def test_report_in_a_real_browser(html_run, tmp_path):
    _needs_browser()
    from selenium.webdriver.common.by import By

    run_dir, planted = html_run
    page = run_dir / "report" / "report.html"
    out = SHOTS or tmp_path
    with open_page(page) as driver:
        assert screenshot(driver, out / "report_top.png").stat().st_size > 10_000
        assert console_errors(driver) == []
        requests = network_requests(driver)
        assert any(u.startswith("file:") for u in requests)  # the log does see the page's own request
        assert [u for u in requests if u.startswith(("http:", "https:", "ws:", "wss:", "ftp:"))] == []
        images = driver.find_elements(By.TAG_NAME, "img")
        assert images and all(
            driver.execute_script("return arguments[0].naturalWidth * arguments[0].clientHeight;", img) > 0
            for img in images
        )
        assert all(img.get_attribute("alt") for img in images)
        table = driver.find_element(By.ID, "headline-table")
        column = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")].index("mean")

        def column_values() -> list[float]:
            rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
            return [float(r.find_elements(By.TAG_NAME, "td")[column].get_attribute("data-value")) for r in rows]

        before = column_values()
        table.find_elements(By.CSS_SELECTOR, "thead th")[column].click()
        after = column_values()
        assert after == sorted(before) and after != before
        select = driver.find_element(By.CSS_SELECTOR, 'select[data-filter="behaviour"]')
        select.find_element(By.CSS_SELECTOR, 'option[value="refusal"]').click()
        visible = [r for r in table.find_elements(By.CSS_SELECTOR, "tbody tr") if r.is_displayed()]
        assert visible and all(r.get_attribute("data-behaviour") == "refusal" for r in visible)
        examples = driver.find_element(By.ID, "examples").text
        assert sum(text in examples for text in planted) >= 3
        assert console_errors(driver) == []
        assert screenshot(driver, out / "report_examples.png", "examples").stat().st_size > 5_000


def test_report_without_javascript_still_shows_tables_and_figures(html_run):
    _needs_browser()
    from selenium.webdriver.common.by import By

    run_dir, _ = html_run
    with open_page(run_dir / "report" / "report.html", javascript=False) as driver:
        controls = driver.find_element(By.ID, "headline-controls")
        assert not controls.is_displayed()  # the script that would show the filters did not run
        rows = driver.find_elements(By.CSS_SELECTOR, "#headline-table tbody tr")
        assert rows and all(r.is_displayed() for r in rows)
        images = driver.find_elements(By.TAG_NAME, "img")
        assert images and all(driver.execute_script("return arguments[0].naturalWidth;", img) > 0 for img in images)
