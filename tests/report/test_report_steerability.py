"""The steerability card and the layer-diagnostics check in a sweep's report (issue 19 items 4 and 5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats as sps

from caa_eval.cli import main
from caa_eval.core import vectors
from caa_eval.stats import load_any

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def ranks_corr(x: list[float], y: list[float]) -> float:
    """Spearman's rho as the Pearson correlation of the ranks (numpy + rankdata)."""
    return float(np.corrcoef(sps.rankdata(x), sps.rankdata(y))[0, 1])


def test_layer_sweep_report_has_card_and_correlates_diagnostics_with_steerability(
    tmp_path, tiny_model_dir, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    args = ["sweep", str(EXAMPLES / "sweep_tiny.yaml"), "--model", str(tiny_model_dir), "--out", str(out)]
    assert main([*args, "--layers", "0-3", "--multipliers=-4,-2,0,2,4"]) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    entries = report["steerability"]
    assert sorted(int(e["layer"]) for e in entries) == [0, 1, 2, 3]
    assert all(e["n_items"] == 4 and "by_letter" in e for e in entries)
    (row,) = report["layer_diagnostics"]
    stored = vectors.load(out / "vectors" / "agree.safetensors").extra["layer_diagnostics"]
    slope = {int(e["layer"]): e["slope_mean"] for e in entries}
    assert row["layers"] == [0, 1, 2, 3]
    assert row["consistency"] == [stored[str(k)]["consistency"] for k in range(4)]
    assert row["slope_mean"] == [slope[k] for k in range(4)]
    expected = ranks_corr([stored[str(k)]["auroc"] for k in range(4)], [slope[k] for k in range(4)])
    assert (row["spearman_auroc"] is None and not np.isfinite(expected)) or abs(
        row["spearman_auroc"] - expected
    ) < 1e-12
    expected = ranks_corr([stored[str(k)]["consistency"] for k in range(4)], [slope[k] for k in range(4)])
    assert abs(row["spearman_consistency"] - expected) < 1e-12
    md = (out / "report" / "report.md").read_text()
    assert "## Steerability card (per item)" in md and "## Which layer" in md
    card_pngs = [f["file"] for f in report["figures"] if f["kind"] == "steerability"]
    assert len(card_pngs) == 4 and all((out / "report" / f).stat().st_size > 5000 for f in card_pngs)
    assert f"]({card_pngs[0]})" in md
    # the card's sentence states the entry's own anti-steerable share
    first = entries[0]
    assert f"{100 * first['anti_steerable_fraction']:.0f}% of items" in md
    # the run folder's long table carries each A/B item's matching letter from the logged docs
    table = load_any(out)
    items = json.loads((EXAMPLES / "tiny_data" / "agree_test.json").read_text())
    letters = table.drop_duplicates("item_id").set_index("item_id")["matching_letter"]
    assert len(letters) == 4
    assert {k: v for k, v in letters.items()} == {str(i): items[i]["answer_matching_behavior"][1] for i in range(4)}
