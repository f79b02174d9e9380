"""The labelling rule in the long table (issue 27): a shared ('*') multiplier-0 run is the baseline of every
vector measured on its task, and stays its own behaviour's baseline when no vector is; a cell without any
baseline is listed as 'no baseline' (untested) while the rest of the table is tested."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from caa_eval.stats import NO_BASELINE, compute_stats, validate_long_table, warn_no_baseline

ITEMS = [f"i{k}" for k in range(8)]


def _rows(behaviour: str, task: str, multiplier: float, scores) -> pd.DataFrame:
    return pd.DataFrame(
        {"item_id": ITEMS, "behaviour": behaviour, "task": task, "multiplier": multiplier, "score": scores}
    )


def test_shared_unsteered_run_serves_every_vector_and_alone_its_own_behaviour():
    base = np.linspace(0.1, 0.8, 8)
    table = pd.concat(
        [
            _rows("*", "caa_ab_sycophancy", 0.0, base),
            _rows("sycophancy", "caa_ab_sycophancy", 1.0, base + 0.1),
            _rows("refusal", "caa_ab_sycophancy", 1.0, base - 0.2),
        ]
    )
    cells = compute_stats(table, n_resamples=200, n_permutations=200).set_index(["behaviour", "multiplier"])
    assert cells.loc[("refusal", 1.0), "diff_vs_0"] == pytest.approx(-0.2)
    assert cells.loc[("sycophancy", 1.0), "diff_vs_0"] == pytest.approx(0.1)
    alone = validate_long_table(_rows("*", "caa_ab_sycophancy", 0.0, base))
    assert set(alone["behaviour"]) == {"sycophancy"}


def test_a_cell_without_baseline_is_listed_and_the_rest_tested(caplog):
    base = np.linspace(0.1, 0.8, 8)
    table = pd.concat(
        [
            _rows("*", "caa_ab_sycophancy", 0.0, base),
            _rows("sycophancy", "caa_ab_sycophancy", 1.0, base + 0.1),
            _rows("sycophancy", "caa_open_sycophancy", 1.0, base * 10),
        ]
    )
    cells = compute_stats(table, n_resamples=200, n_permutations=200).set_index(["task", "multiplier"])
    lacking = cells.loc[("caa_open_sycophancy", 1.0)]
    assert lacking["note"] == NO_BASELINE and np.isnan(lacking["p_wilcoxon"]) and np.isnan(lacking["p_holm"])
    assert np.isfinite(cells.loc[("caa_ab_sycophancy", 1.0), "p_holm"])
    with caplog.at_level("WARNING"):
        (line,) = warn_no_baseline(cells.reset_index())
    assert "task=caa_open_sycophancy" in line and [r.getMessage() for r in caplog.records] == [line]
