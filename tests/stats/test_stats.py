"""caa_eval.stats against independent scipy/statsmodels/numpy computations, plus calibration and input checks."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from caa_eval import cli
from caa_eval import stats as st
from caa_eval.errors import CAAEvalError

FAST = {"n_resamples": 300, "n_permutations": 999}


def long_table(cells: dict[tuple[str, float], np.ndarray], **extra: str) -> pd.DataFrame:
    rows = [
        {"item_id": f"q{i}", "behaviour": b, "multiplier": m, "score": v, **extra}
        for (b, m), values in cells.items()
        for i, v in enumerate(values)
    ]
    return pd.DataFrame(rows)


def test_matches_scipy_statsmodels_reference():
    rng = np.random.default_rng(7)
    base = rng.uniform(0.2, 0.8, 10)
    plus = np.clip(base + rng.normal(0.08, 0.1, 10), 0, 1)
    minus = np.clip(base + rng.normal(-0.02, 0.1, 10), 0, 1)
    df = long_table({("syc", 0.0): base, ("syc", 1.0): plus, ("syc", -1.0): minus})
    cells = st.compute_stats(df, seed=3, n_resamples=2000, n_permutations=9999)
    assert list(cells["multiplier"]) == [-1.0, 0.0, 1.0]
    p_ref = {}
    for m, x in ((1.0, plus), (-1.0, minus)):
        row = cells[cells.multiplier == m].iloc[0]
        d = x - base
        assert row["n"] == 10 and row["mean"] == pytest.approx(x.mean()) and row["diff_vs_0"] == pytest.approx(d.mean())
        assert row["p_wilcoxon"] == pytest.approx(sps.wilcoxon(x, base).pvalue)
        assert row["wilcoxon_method"] == "exact"  # 10 untied non-zero differences
        # n=10 -> 2^10 sign flips < n_permutations: scipy enumerates them exactly; recompute by brute force
        flips = np.array(list(itertools.product([1, -1], repeat=10)))
        null = (flips * d).mean(axis=1)
        exact = np.mean(np.abs(null) >= abs(d.mean()) - 1e-12)
        assert row["p_permutation"] == pytest.approx(exact, abs=1e-9)
        assert row["cohen_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
        mde_dz = TTestPower().solve_power(nobs=10, alpha=0.05, power=0.8, alternative="two-sided")
        assert row["mde_dz"] == pytest.approx(mde_dz) and row["mde"] == pytest.approx(mde_dz * d.std(ddof=1))
        assert row["frac_wrong_way"] == pytest.approx(np.mean(np.sign(d) == -np.sign(m)))
        assert row["ci_low"] < x.mean() < row["ci_high"] and row["diff_ci_low"] < d.mean() < row["diff_ci_high"]
        # the bootstrap CI of a mean is close to the t interval for smooth data
        t_low, t_high = sps.t.interval(0.95, 9, loc=d.mean(), scale=sps.sem(d))
        assert row["diff_ci_low"] == pytest.approx(t_low, abs=0.05) and row["diff_ci_high"] == pytest.approx(
            t_high, abs=0.05
        )
        p_ref[m] = row["p_wilcoxon"]
    holm = multipletests([p_ref[-1.0], p_ref[1.0]], method="holm")[1]
    bh = multipletests([p_ref[-1.0], p_ref[1.0]], method="fdr_bh")[1]
    steered = cells[~cells.is_baseline]
    np.testing.assert_allclose(steered["p_holm"], holm)
    np.testing.assert_allclose(steered["p_bh"], bh)
    baseline = cells[cells.is_baseline].iloc[0]
    assert np.isnan(baseline["p_wilcoxon"]) and np.isnan(baseline["p_holm"]) and not baseline["significant"]
    assert baseline["mean"] == pytest.approx(base.mean())


def test_planted_effect_detected_and_null_not():
    rng = np.random.default_rng(11)
    base = rng.uniform(0.2, 0.8, 50)
    df = long_table(
        {
            ("real", 0.0): base,
            ("real", 1.0): base + rng.normal(0.05, 0.08, 50),
            ("none", 0.0): base,
            ("none", 1.0): base + rng.normal(0.0, 0.08, 50),
        }
    )
    cells = st.compute_stats(df, **FAST).set_index(["behaviour", "multiplier"])
    real, none = cells.loc[("real", 1.0)], cells.loc[("none", 1.0)]
    assert real["significant"] and real["p_holm"] < 0.01 and real["cohen_dz"] > 0.4 and real["frac_wrong_way"] < 0.4
    assert real["diff_ci_low"] > 0
    assert not none["significant"] and none["diff_ci_low"] < 0 < none["diff_ci_high"]


def test_null_rejection_rate_is_calibrated():
    """200 paired null datasets (n=50): both tests reject at about alpha."""
    rng = np.random.default_rng(2024)
    cells = {}
    for k in range(200):
        base = rng.uniform(0, 1, 50)
        cells[(f"b{k:03d}", 0.0)] = base
        cells[(f"b{k:03d}", 1.0)] = base + rng.normal(0, 0.1, 50)
    res = st.compute_stats(long_table(cells), n_resamples=100, n_permutations=999)
    steered = res[~res.is_baseline]
    assert len(steered) == 200
    for column in ("p_wilcoxon", "p_permutation"):
        rate = float((steered[column] < 0.05).mean())
        assert 0.02 <= rate <= 0.09, (column, rate)
    assert (steered["p_holm"] < 0.05).sum() <= 1  # family-wise control under the global null


def test_holm_bh_known_example_and_properties():
    holm, bh = st.adjust_pvalues([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(holm, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(bh, [0.02, 0.04, 0.04, 0.02])
    holm, bh = st.adjust_pvalues([0.2, np.nan, 0.01])  # NaN stays outside the family
    assert np.isnan(holm[1]) and np.isnan(bh[1])
    np.testing.assert_allclose(holm[[0, 2]], [0.2, 0.02])
    p = np.random.default_rng(0).uniform(0, 0.2, 40)
    holm, bh = st.adjust_pvalues(p)
    order = np.argsort(p)
    assert (holm >= p).all() and (bh >= p).all() and (holm >= bh - 1e-15).all()
    assert (np.diff(holm[order]) >= 0).all() and (np.diff(bh[order]) >= 0).all() and (holm <= 1).all()


def test_missing_judge_scores_excluded_pairwise_and_counted():
    rng = np.random.default_rng(5)
    base = rng.integers(0, 11, 30).astype(float)
    plus = np.clip(base + rng.integers(-1, 4, 30), 0, 10)
    base[[1, 2]] = np.nan  # judge failed on the baseline
    plus[[2, 3, 4]] = np.nan  # and on the steered cell (item 2 on both)
    df = long_table({("syc", 0.0): base, ("syc", 1.0): plus}, task="caa_open_syc", metric="judge_score")
    row = st.compute_stats(df, **FAST).query("multiplier == 1").iloc[0]
    ok = ~np.isnan(base) & ~np.isnan(plus)
    assert row["n_missing"] == 4 and row["n"] == 26 == ok.sum()
    assert row["diff_vs_0"] == pytest.approx((plus[ok] - base[ok]).mean())
    assert row["p_wilcoxon"] == pytest.approx(sps.wilcoxon(plus[ok], base[ok], method="asymptotic").pvalue)
    assert row["wilcoxon_method"] == "asymptotic"  # tied integer judge scores
    assert row["mean"] == pytest.approx(np.nanmean(plus)) and row["n_items"] == 27


def _tie_corrected_normal_p(d: np.ndarray) -> float:
    """Wilcoxon signed-rank p by hand: zeros dropped, average ranks, tie-corrected variance, no continuity term."""
    nz = d[d != 0]
    n, ranks = nz.size, sps.rankdata(np.abs(nz))
    _, counts = np.unique(np.abs(nz), return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24 - (counts**3 - counts).sum() / 48
    z = (ranks[nz > 0].sum() - n * (n + 1) / 4) / math.sqrt(var)
    return float(2 * sps.norm.sf(abs(z)))


def test_wilcoxon_uses_normal_approximation_on_ties_and_exact_otherwise():
    rng = np.random.default_rng(9)
    base = rng.integers(0, 11, 200).astype(float)
    d = np.clip(base + rng.integers(-1, 3, 200), 0, 10) - base  # 200 tied integer differences, with zeros
    res = st.paired_tests(d, np.random.default_rng(0), 999)
    assert res.wilcoxon_method == "asymptotic" and res.p_wilcoxon == pytest.approx(_tie_corrected_normal_p(d))
    small = d[:12]  # scipy's "auto" would enumerate all 2^12 sign patterns here
    assert len(np.unique(np.abs(small[small != 0]))) < (small != 0).sum()
    res = st.paired_tests(small, np.random.default_rng(0), 999)
    assert res.wilcoxon_method == "asymptotic" and res.p_wilcoxon == pytest.approx(_tie_corrected_normal_p(small))
    untied = rng.normal(0.3, 1.0, 12)
    res = st.paired_tests(untied, np.random.default_rng(0), 999)
    assert res.wilcoxon_method == "exact" and res.p_wilcoxon == pytest.approx(
        sps.wilcoxon(untied, method="exact").pvalue
    )
    assert st.wilcoxon_method(np.append(untied, 0.0)) == "asymptotic"  # a zero difference
    assert st.wilcoxon_method(rng.normal(size=60)) == "asymptotic"  # beyond the exact table
    # compute_stats records the method per cell
    judge = long_table({("j", 0.0): base, ("j", 1.0): base + d}, metric="judge_score")
    cells = st.compute_stats(judge, **FAST)
    assert list(cells["wilcoxon_method"]) == ["", "asymptotic"]


def test_subject_macro_mean_with_uneven_subjects():
    """Items with a subject (MMLU): mean per subject, then over subjects; a flat item mean would differ."""
    sizes, shift = {"anatomy": 3, "virology": 9}, {"anatomy": -0.09, "virology": 0.03}
    rows, base_by, plus_by, weights = [], {}, {}, []
    for subject, n in sizes.items():
        base = np.linspace(0.5, 0.9, n) if subject == "anatomy" else np.linspace(0.2, 0.5, n)
        plus = base + shift[subject] + np.linspace(-0.01, 0.01, n)[::-1] * (np.arange(n) % 2)
        base_by[subject], plus_by[subject] = base, plus
        weights += [1 / (len(sizes) * n)] * n
        for m, values in ((0.0, base), (1.0, plus)):
            rows += [
                {
                    "item_id": f"{subject}:{i}",
                    "behaviour": "syc",
                    "task": "mmlu",
                    "metric": "p_correct",
                    "subject": subject,
                    "multiplier": m,
                    "score": v,
                }
                for i, v in enumerate(values)
            ]
    cells = st.paired_stats(pd.DataFrame(rows), n_resamples=500, n_permutations=9999)
    row = cells[cells.multiplier == 1].iloc[0]
    macro = np.mean([plus_by[s].mean() for s in sizes])
    flat = np.concatenate(list(plus_by.values())).mean()
    assert abs(macro - flat) > 0.05  # the check below can tell the two apart
    assert row["mean"] == pytest.approx(macro) and row["n_subjects"] == 2 and row["n"] == 12
    assert row["baseline_mean"] == pytest.approx(np.mean([base_by[s].mean() for s in sizes]))
    d = np.concatenate([plus_by[s] - base_by[s] for s in sizes])
    assert row["diff_vs_0"] == pytest.approx(np.sum(np.array(weights) * d))
    assert row["ci_low"] < macro < row["ci_high"] and row["diff_ci_low"] < row["diff_vs_0"] < row["diff_ci_high"]
    # permutation test of the macro mean difference: 2^12 sign flips, enumerated exactly
    flips = np.array(list(itertools.product([1, -1], repeat=12)))
    null = (flips * d * np.array(weights)).sum(axis=1)
    exact = np.mean(np.abs(null) >= abs(row["diff_vs_0"]) - 1e-12)
    assert row["p_permutation"] == pytest.approx(exact, abs=1e-9)
    assert row["cohen_dz"] == pytest.approx(row["diff_vs_0"] / d.std(ddof=1))
    dose = st.compute_dose_response(pd.DataFrame(rows), n_resamples=300).iloc[0]  # slope = difference per item here
    assert dose["slope"] == pytest.approx(row["diff_vs_0"])
    # without subjects the same scores give the flat mean
    flat_cells = st.compute_stats(pd.DataFrame(rows).drop(columns="subject"), **FAST)
    assert flat_cells[flat_cells.multiplier == 1].iloc[0]["mean"] == pytest.approx(flat)


def test_subject_column_checked():
    rows = [
        {"item_id": "a:0", "behaviour": "x", "task": "mmlu", "multiplier": 0, "score": 0.5, "subject": "a"},
        {"item_id": "a:1", "behaviour": "x", "task": "mmlu", "multiplier": 0, "score": 0.5, "subject": ""},
    ]
    with pytest.raises(CAAEvalError, match="task 'mmlu' has rows with and without a subject"):
        st.validate_long_table(pd.DataFrame(rows))
    rows[1] |= {"item_id": "a:0", "multiplier": 1, "subject": "b"}
    with pytest.raises(CAAEvalError, match="item 'a:0' of task 'mmlu' has several subjects"):
        st.validate_long_table(pd.DataFrame(rows))


def test_paired_stats_is_the_public_name_of_compute_stats():
    rng = np.random.default_rng(4)
    base = rng.uniform(size=15)
    df = long_table({("a", 0.0): base, ("a", 1.0): base + rng.normal(0.05, 0.1, 15)})
    pd.testing.assert_frame_equal(st.paired_stats(df, seed=2, **FAST), st.compute_stats(df, seed=2, **FAST))
    assert {
        "load_any",
        "long_table_from_runs",
        "compute_stats",
        "paired_stats",
        "compute_dose_response",
        "adjust_pvalues",
    } <= set(st.__all__)


def test_edge_cases_zero_differences_and_tiny_n():
    base = np.array([0.2, 0.4, 0.6])
    df = long_table({("same", 0.0): base, ("same", 1.0): base.copy(), ("shift", 0.0): base, ("shift", 1.0): base + 0.1})
    noisy = (base * 3.0) / 3.0 + 0.1 - 0.1
    assert (noisy != base).any()  # really floating-point noise
    df = pd.concat(
        [
            df,
            long_table({("one", 0.0): [0.5], ("one", 1.0): [0.9]}),
            long_table({("noise", 0.0): base, ("noise", 1.0): noisy}),
        ]
    )
    cells = st.compute_stats(df, **FAST).set_index(["behaviour", "multiplier"])
    same = cells.loc[("same", 1.0)]
    assert same["p_wilcoxon"] == 1.0 and same["p_permutation"] == 1.0 and "all differences zero" in same["note"]
    shift = cells.loc[("shift", 1.0)]
    assert np.isnan(shift["cohen_dz"]) and "zero variance" in shift["note"]
    noise = cells.loc[("noise", 1.0)]  # differences of ~1e-17 are ties, not a consistent direction
    assert noise["p_wilcoxon"] == 1.0 and noise["frac_wrong_way"] == 0.0 and "all differences zero" in noise["note"]
    one = cells.loc[("one", 1.0)]
    assert one["n"] == 1 and np.isnan(one["p_wilcoxon"]) and np.isnan(one["p_holm"]) and "n<2" in one["note"]
    assert cells["p_holm"].notna().sum() == 3  # the n=1 cell is not in the correction family


def test_missing_baseline_and_no_common_items_name_the_cell():
    df = long_table({("syc", 1.0): [0.1, 0.2]}, layer="13")
    cells = st.compute_stats(df)  # listed, not tested: a report never fails on it
    assert cells["note"].tolist() == ["no baseline"] and cells["p_holm"].isna().all()
    with pytest.raises(
        CAAEvalError, match=r"no multiplier-0 baseline for cell \(behaviour=syc, task=syc, metric=score, layer=13\)"
    ):
        st.require_some_baseline(cells)  # `caa-eval stats`: a table with nothing to test is refused
    df = pd.concat(
        [
            long_table({("syc", 1.0): [0.1, 0.2]}),
            pd.DataFrame({"item_id": ["x", "y"], "behaviour": "syc", "multiplier": 0, "score": [0.1, 0.3]}),
        ]
    )
    with pytest.raises(CAAEvalError, match=r"multiplier=\+1\) shares no item_id"):
        st.compute_stats(df)


def test_baseline_matching_across_layers():
    base = np.linspace(0.1, 0.9, 12)
    rows = []
    for layer in ("10", "11"):
        rows.append(long_table({("syc", 0.0): base, ("syc", 1.0): base + 0.1 * int(layer[-1]) + 0.01}, layer=layer))
    rows.append(long_table({("syc", 1.0): base + 0.3}, layer="12"))  # no own baseline: layers 10/11 agree
    cells = st.compute_stats(pd.concat(rows), **FAST).set_index(["layer", "multiplier"])
    assert cells.loc[("11", 1.0), "baseline_layer"] == "11"
    assert cells.loc[("12", 1.0), "baseline_layer"] == "10" and "agreeing" in cells.loc[("12", 1.0), "note"]
    assert cells.loc[("12", 1.0), "diff_vs_0"] == pytest.approx(0.3)
    rows[1] = long_table({("syc", 0.0): base + 0.05, ("syc", 1.0): base + 0.2}, layer="11")  # now they disagree
    with pytest.raises(CAAEvalError, match="disagree on item"):
        st.compute_stats(pd.concat(rows), **FAST)


def test_shared_baseline_rows():
    base = np.linspace(0.3, 0.9, 8)
    df = pd.concat(
        [
            long_table({("*", 0.0): base}, task="mmlu", metric="p_correct"),
            long_table({("syc", 1.0): base - 0.1, ("ref", -1.0): base - 0.2}, task="mmlu", metric="p_correct"),
        ]
    )
    cells = st.compute_stats(df, **FAST).set_index(["behaviour", "multiplier"])
    assert cells.loc[("syc", 1.0), "diff_vs_0"] == pytest.approx(-0.1)
    assert cells.loc[("ref", -1.0), "diff_vs_0"] == pytest.approx(-0.2)
    assert cells.loc[("ref", 0.0), "mean"] == pytest.approx(base.mean())
    with pytest.raises(CAAEvalError, match="only allowed at multiplier 0"):
        st.validate_long_table(long_table({("*", 1.0): base}))


def test_deterministic_given_seed():
    rng = np.random.default_rng(1)
    base = rng.uniform(size=40)
    df = long_table({("a", 0.0): base, ("a", 1.0): base + rng.normal(0.02, 0.1, 40)})
    one, two = st.compute_stats(df, seed=5, **FAST), st.compute_stats(df, seed=5, **FAST)
    pd.testing.assert_frame_equal(one, two)
    other = st.compute_stats(df, seed=6, **FAST)
    assert not np.allclose(one["ci_low"], other["ci_low"])
    shuffled = st.compute_stats(df.sample(frac=1, random_state=0), seed=5, **FAST)
    pd.testing.assert_frame_equal(one, shuffled)


def test_dose_response_matches_polyfit_and_page():
    rng = np.random.default_rng(3)
    mults = [-2.0, -1.0, 0.0, 1.0, 2.0]
    base = rng.uniform(0.3, 0.7, 25)
    scores = {("syc", m): base + 0.05 * m + rng.normal(0, 0.05, 25) for m in mults if m}
    scores[("syc", 0.0)] = base
    scores[("flat", 0.0)] = scores[("anti", 0.0)] = base
    for m in (-1.0, 1.0):
        scores[("flat", m)] = base + rng.normal(0, 0.05, 25)
        scores[("anti", m)] = base - 0.1 * m + rng.normal(0, 0.05, 25)
    dose = st.compute_dose_response(long_table(scores), n_resamples=300).set_index("behaviour")
    matrix = np.column_stack([scores[("syc", m)] for m in mults])
    slopes = np.array([np.polyfit(mults, row, 1)[0] for row in matrix])
    syc = dose.loc["syc"]
    assert syc["slope"] == pytest.approx(slopes.mean()) and syc["slope_ci_low"] < slopes.mean() < syc["slope_ci_high"]
    page = sps.page_trend_test(matrix)
    assert syc["page_L"] == pytest.approx(page.statistic)
    two_sided = min(1, 2 * min(page.pvalue, sps.page_trend_test(matrix[:, ::-1]).pvalue))
    assert syc["p_trend"] == pytest.approx(two_sided, rel=1e-9, abs=0)
    assert syc["trend_direction"] == "increasing" and syc["p_trend_holm"] < 0.001
    assert dose.loc["anti", "trend_direction"] == "decreasing" and dose.loc["anti", "p_trend"] < 0.001
    assert dose.loc["anti", "slope"] < 0 and dose.loc["flat", "p_trend"] > 0.01


def test_per_item_slopes_with_missing_scores():
    m = pd.DataFrame([[0.0, 1.0, 2.0], [1.0, np.nan, 3.0], [np.nan, np.nan, 1.0]], columns=[-1.0, 0.0, 1.0])
    slopes = st.per_item_slopes(m)
    np.testing.assert_allclose(slopes[:2], [1.0, 1.0])
    assert np.isnan(slopes[2])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("item_id,behaviour,score\n1,a,0.5\n", "missing column.*multiplier"),
        ("item_id,behaviour,multiplier,score\n1,a,one,0.5\n", "line 2: multiplier \\['one'\\] is not a finite number"),
        ("item_id,behaviour,multiplier,score\n1,a,0,0.5\n2,a,0,high\n", "line 3: score \\['high'\\] is not a number"),
        (
            "item_id,behaviour,multiplier,score\n1,a,0,0.5\n1,a,0,0.6\n",
            "item '1' appears 2 times in cell \\(behaviour=a",
        ),
        ("item_id,behaviour,multiplier,score\n,a,0,0.5\n", "line 2: empty item_id"),
        ("item_id,behaviour,multiplier,score\n", "no rows"),
        ("", "empty"),
    ],
)
def test_bad_csv_rejected_clearly(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(CAAEvalError, match=message):
        st.load_long_table(path)


def test_jsonl_and_other_inputs(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"item_id": 1, "behaviour": "a", "multiplier": 0, "score": 0.5, "layer": 13}\n\n'
        '{"item_id": 1, "behaviour": "a", "multiplier": 1, "score": null, "layer": 13.0}\n'
    )
    table = st.load_long_table(path)
    assert list(table["layer"]) == ["13", "13"] and table["score"].isna().sum() == 1
    assert list(table["task"]) == ["a", "a"] and set(table["metric"]) == {"score"}
    path.write_text('{"item_id": 1, "behaviour": "a", "multiplier": 0, "score": 0.5}\n{broken\n')
    with pytest.raises(CAAEvalError, match="line 2 is not valid JSON"):
        st.load_long_table(path)
    with pytest.raises(CAAEvalError, match="unknown table format"):
        st.load_long_table(_touch(tmp_path / "t.xlsx"))
    with pytest.raises(CAAEvalError, match="no such file"):
        st.load_long_table(tmp_path / "absent.csv")


def _touch(path):
    path.write_text("x")
    return path


def test_model_args_and_layer_parsing():
    assert st.parse_model_args("pretrained=x,layers=[10,12],multiplier=-1.5,site=mlp") == {
        "pretrained": "x",
        "layers": [10, 12],
        "multiplier": -1.5,
        "site": "mlp",
    }
    assert st.parse_model_args({"layers": 13}) == {"layers": 13}
    assert [st.format_layer(v) for v in (13, 13.0, "13", "[10, 12]", [10, 12], None, "")] == [
        "13",
        "13",
        "13",
        "10,12",
        "10,12",
        "",
        "",
    ]


def test_stats_cli_prints_and_writes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 50)
    df = long_table(
        {
            ("sycophancy", 0.0): base,
            ("sycophancy", 1.0): base + rng.normal(0.1, 0.1, 50),
            ("sycophancy", -1.0): base + rng.normal(-0.1, 0.1, 50),
        }
    )
    csv = tmp_path / "long.csv"
    df.to_csv(csv, index=False)
    out_json, out_csv = tmp_path / "out" / "stats.json", tmp_path / "out" / "stats.csv"
    assert (
        cli.main(
            [
                "stats",
                str(csv),
                "--json",
                str(out_json),
                "--csv",
                str(out_csv),
                "--seed",
                "1",
                "--n-resamples",
                "300",
                "--n-permutations",
                "999",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "p_wilcoxon" in printed and "p_holm" in printed and "Dose-response" in printed
    data = json.loads(out_json.read_text())
    required = {
        "behaviour",
        "task",
        "layer",
        "site",
        "condition",
        "multiplier",
        "n",
        "mean",
        "ci_low",
        "ci_high",
        "diff_vs_0",
        "p_wilcoxon",
        "p_holm",
        "diff_ci_low",
        "diff_ci_high",
        "p_permutation",
        "p_bh",
        "cohen_dz",
        "frac_wrong_way",
        "mde",
        "n_missing",
        "significant",
    }
    assert len(data["cells"]) == 3 and required <= set(data["cells"][0])
    assert data["settings"]["seed"] == 1 and data["correction"]["n_tests"] == 2
    assert len(pd.read_csv(out_csv)) == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,behaviour,score\n1,a,0.5\n")
    assert cli.main(["stats", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("caa-eval stats: error:") and "multiplier" in err and "\n" not in err
