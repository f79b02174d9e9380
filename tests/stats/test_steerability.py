"""Per-item steerability (issue 19) against an independent numpy/scipy computation on planted data."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from caa_eval.cli import main
from caa_eval.stats.steerability import ENTRY_KEYS, SUMMARY_KEYS, steerability

MULTS = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
N_ITEMS = 30
GROUP = ("syc", "caa_ab_syc", "p_match", "13", "residual", "after_instruction", "")  # GROUP_KEY order


def planted_table() -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """30 items: every third anti-steerable (negative log-odds slope), and all of those have matching answer B
    (a planted letter bias); item-specific noise around each line so that the fits and their p-values differ."""
    rng = np.random.default_rng(7)
    anti = np.arange(N_ITEMS) % 3 == 0
    # letter bias: every anti-steerable item and 5 steerable ones have matching answer B, the other 15 A
    letters = np.where(anti | (np.arange(N_ITEMS) % 4 == 1), "B", "A")
    letters[np.flatnonzero(letters == "B")[15:]] = "A"
    slopes = np.where(anti, -rng.uniform(0.2, 0.6, N_ITEMS), rng.uniform(0.3, 1.2, N_ITEMS))
    logit = rng.normal(0, 1, N_ITEMS)[:, None] + slopes[:, None] * MULTS + rng.normal(0, 0.4, (N_ITEMS, MULTS.size))
    p = 1 / (1 + np.exp(-logit))
    p[1, 4], p[2, 0], p[4, 2] = 1.0, 0.0, 1.0  # exact 0 and 1: clipped, not an error
    rows = [
        {
            "item_id": f"q{i:02d}",  # sorted ids = row order (the bootstrap resamples in id order)
            "behaviour": GROUP[0],
            "task": GROUP[1],
            "metric": GROUP[2],
            "layer": 13,
            "site": GROUP[4],
            "positions": GROUP[5],
            "multiplier": m,
            "score": p[i, j],
            "matching_letter": letters[i],
        }
        for i in range(N_ITEMS)
        for j, m in enumerate(MULTS)
    ]
    return pd.DataFrame(rows), p, letters, slopes


def reference(p: np.ndarray, seed_key: tuple) -> dict:
    """Everything recomputed with numpy/scipy primitives, without caa_eval."""
    q = np.clip(p, 1e-6, 1 - 1e-6)
    y = np.log(q / (1 - q))
    slopes = np.polyfit(MULTS, y.T, 1)[0]
    fitted = np.polyval(np.polyfit(MULTS, y.T, 1), MULTS[:, None]).T
    sxx = ((MULTS - MULTS.mean()) ** 2).sum()
    se = np.sqrt(((y - fitted) ** 2).sum(axis=1) / (MULTS.size - 2) / sxx)
    p_pos = sps.t.sf(slopes / se, MULTS.size - 2)
    ranks = np.apply_along_axis(sps.rankdata, 1, y)
    mr = np.arange(1, 6)
    rho = np.array([np.corrcoef(mr, r)[0, 1] for r in ranks])
    rng = np.random.default_rng([0, zlib.crc32("|".join(seed_key).encode())])
    boot = sps.bootstrap((slopes,), np.mean, n_resamples=2000, method="BCa", confidence_level=0.95, rng=rng)
    n, k = slopes.size, int((slopes < 0).sum())
    z = sps.norm.ppf(0.975)
    phat = k / n
    centre = (phat + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(phat * (1 - phat) / n + z**2 / (4 * n**2))
    return {
        "slopes": slopes,
        "mean": slopes.mean(),
        "ci": boot.confidence_interval,
        "median": np.median(slopes),
        "iqr": np.percentile(slopes, [25, 75]),
        "anti": k / n,
        "wilson": (centre - half, centre + half),
        "sigpos": np.mean(p_pos < 0.05),
        "spearman": rho.mean(),
    }


def test_planted_slopes_fractions_and_cis_equal_numpy():
    table, p, letters, planted = planted_table()
    result = steerability(table, seed=0)
    assert len(result.entries) == 1 and not result.skipped
    entry = result.entries[0]
    assert list(entry) == ENTRY_KEYS
    ref = reference(p, ("steerability", *GROUP))
    fits = result.groups[0].fits.loc[[f"q{i:02d}" for i in range(N_ITEMS)]]
    np.testing.assert_allclose(fits["slope"].to_numpy(), ref["slopes"], rtol=0, atol=1e-9)
    assert np.all(np.sign(ref["slopes"]) == np.sign(planted))  # the planted third really is anti-steerable
    assert entry["n_items"] == N_ITEMS and entry["multipliers"] == MULTS.tolist()
    assert entry["slope_mean"] == pytest.approx(ref["mean"], abs=1e-9)
    assert entry["slope_median"] == pytest.approx(ref["median"], abs=1e-9)
    np.testing.assert_allclose(entry["slope_iqr"], ref["iqr"], atol=1e-9)
    np.testing.assert_allclose(entry["slope_mean_ci"], ref["ci"], atol=1e-6)
    assert entry["anti_steerable_fraction"] == ref["anti"] == 10 / 30
    np.testing.assert_allclose(entry["anti_steerable_ci"], ref["wilson"], atol=1e-6)
    assert entry["significantly_positive_fraction"] == ref["sigpos"]
    assert 0 < entry["significantly_positive_fraction"] < 2 / 3  # some, not all, steerable items pass the t-test
    assert entry["spearman_mean"] == pytest.approx(ref["spearman"], abs=1e-9)


def test_planted_letter_bias_is_found():
    table, p, letters, _ = planted_table()
    by = steerability(table, seed=0).entries[0]["by_letter"]
    assert set(by) == {"A", "B", "difference_p"}
    for letter in "AB":
        ref = reference(p[letters == letter], ("letter", *GROUP, letter))
        assert set(by[letter]) == set(SUMMARY_KEYS)
        assert by[letter]["n_items"] == 15
        assert by[letter]["slope_mean"] == pytest.approx(ref["mean"], abs=1e-9)
        np.testing.assert_allclose(by[letter]["slope_mean_ci"], ref["ci"], atol=1e-6)
        assert by[letter]["anti_steerable_fraction"] == ref["anti"]
        np.testing.assert_allclose(by[letter]["anti_steerable_ci"], ref["wilson"], atol=1e-6)
    # Mann-Whitney U, normal approximation with continuity correction (no ties), written out by hand
    slopes = reference(p, ("x",))["slopes"]
    a, b = slopes[letters == "A"], slopes[letters == "B"]
    ranks = sps.rankdata(np.concatenate([a, b]))
    u = ranks[: a.size].sum() - a.size * (a.size + 1) / 2
    mu, sd = a.size * b.size / 2, np.sqrt(a.size * b.size * (a.size + b.size + 1) / 12)
    p_ref = 2 * sps.norm.sf((abs(u - mu) - 0.5) / sd)
    assert by["difference_p"] == pytest.approx(p_ref, abs=1e-9)
    assert by["difference_p"] < 0.01  # the planted bias is detected
    assert by["A"]["slope_mean"] > by["B"]["slope_mean"]


def test_without_letter_column_no_by_letter_and_split_by_other_column():
    table, p, letters, _ = planted_table()
    plain = table.drop(columns="matching_letter").assign(half=["first" if i < 75 else "second" for i in range(150)])
    entry = steerability(plain, split_by="half").entries[0]
    assert "by_letter" not in entry
    assert set(entry["by_half"]) == {"first", "second", "difference_p"}
    assert entry["by_half"]["first"]["n_items"] == 15
    ref = reference(p[:15], ("x",))
    assert entry["by_half"]["first"]["slope_mean"] == pytest.approx(ref["mean"], abs=1e-9)


def test_two_multipliers_get_no_entry_and_say_why(tmp_path, capsys):
    table, *_ = planted_table()
    two = table[table["multiplier"].isin([0.0, 1.0])]
    result = steerability(two)
    assert result.entries == []
    assert len(result.skipped) == 1 and "only 2 multipliers (0, +1)" in result.skipped[0]
    csv = tmp_path / "long.csv"
    two.to_csv(csv, index=False)
    out = tmp_path / "s.json"
    assert main(["stats", str(csv), "--json", str(out), "--n-resamples", "200", "--n-permutations", "200"]) == 0
    doc = json.loads(out.read_text())
    assert doc["steerability"] == []
    assert "only 2 multipliers" in doc["steerability_skipped"][0]
    assert "only 2 multipliers" in capsys.readouterr().out


def test_probabilities_of_exactly_0_and_1_are_clipped():
    table, p, *_ = planted_table()
    assert (p == 1.0).any() and (p == 0.0).any()
    entry = steerability(table).entries[0]
    assert np.isfinite(entry["slope_mean"])
    slope_q1 = steerability(table).groups[0].fits.loc["q01", "slope"]
    y = np.log(np.clip(p[1], 1e-6, 1 - 1e-6) / (1 - np.clip(p[1], 1e-6, 1 - 1e-6)))
    assert slope_q1 == pytest.approx(np.polyfit(MULTS, y, 1)[0], abs=1e-9)


def test_non_probability_metric_is_fitted_as_is():
    table, p, *_ = planted_table()
    judge = table.assign(metric="judge_score", score=table["score"] * 10)
    fits = steerability(judge).groups[0].fits
    np.testing.assert_allclose(fits.loc["q03", "slope"], np.polyfit(MULTS, p[3] * 10, 1)[0], atol=1e-9)


def test_steerability_command_and_split_by_errors(tmp_path, capsys):
    table, *_ = planted_table()
    csv = tmp_path / "long.csv"
    table.to_csv(csv, index=False)
    out, png = tmp_path / "st.json", tmp_path / "st.png"
    assert main(["steerability", str(csv), "--json", str(out), "--png", str(png)]) == 0
    doc = json.loads(out.read_text())
    assert list(doc["steerability"][0]) == ENTRY_KEYS
    assert png.stat().st_size > 5000
    text = capsys.readouterr().out
    assert "33% of items (95% CI 19%–51%) move against the vector" in text
    assert main(["steerability", str(csv), "--split-by", "nope"]) == 2
    assert "no such column" in capsys.readouterr().err
