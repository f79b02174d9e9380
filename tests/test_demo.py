"""The README's first command, `caa-eval demo`, end to end on the embedded model (fewer items, same code)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_shows_the_effect(tmp_path, smollm2_dir, capsys):
    from caa_eval.cli import main

    assert main(["demo", "--out", str(tmp_path / "demo"), "--limit", "6"]) == 0
    table = (tmp_path / "demo" / "demo_table.md").read_text()
    assert (
        table
        == capsys.readouterr().out.split("[5/5] paired statistics against multiplier 0\n", 1)[1].rstrip("\n") + "\n"
    )
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith("| multiplier")
    }
    assert set(rows) == {"-2", "-1", "+0", "+1", "+2"}
    log_odds = {m: float(r[1]) for m, r in rows.items()}
    # the vector moves the reply preference: more upbeat at +2 than at 0, more gloomy at -2
    assert log_odds["-2"] < log_odds["+0"] < log_odds["+2"], log_odds
    for m in ("-2", "+0", "+2"):
        run = tmp_path / "demo" / "runs" / f"m{m}"
        results = sorted(run.glob("results_*.json"))
        assert results, run
        recorded = json.loads(results[0].read_text())
        assert float(recorded["config"]["model_args"]["multiplier"]) == float(m)  # the run says how it was steered
        assert recorded["config"]["steering"]["multiplier"] == float(m) and (m == "+0") == (
            recorded["config"]["steering"]["vector"] is None
        )
        assert list(run.glob("judged_caa_demo_optimism_open_*.jsonl"))
