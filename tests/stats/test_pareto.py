"""Pareto set of steering vs prompting: on planted (cost, effect) points it is exactly the planted one, and a
planted long table gives the planted effects, KLs, MMLU changes and efficient settings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from caa_eval.stats import validate_long_table
from caa_eval.stats.pareto import pareto_efficient, pareto_table

# cost, effect, efficient?
PLANTED = [
    (0.0, 0.0, True),  # the plain model
    (0.1, 0.2, True),
    (0.2, 0.15, False),  # more cost, less effect than (0.1, 0.2)
    (0.3, 0.5, True),
    (0.3, 0.4, False),  # same cost, less effect
    (0.5, 0.5, False),  # same effect, more cost
    (0.05, -0.1, True),  # the other direction has its own frontier
    (0.2, -0.3, True),
    (0.25, -0.2, False),
    (0.4, 0.0, False),  # no effect at a cost: the plain model dominates it
    (math.nan, 0.9, False),  # unknown cost: never efficient, dominates nothing
    (0.6, 0.9, True),
]


def test_planted_pareto_set_is_found_exactly():
    cost, effect, want = (np.array(x, dtype=float) for x in zip(*PLANTED))
    assert pareto_efficient(cost, effect).tolist() == want.astype(bool).tolist()
    order = np.random.default_rng(0).permutation(len(PLANTED))  # order does not matter
    assert pareto_efficient(cost[order], effect[order]).tolist() == want.astype(bool)[order].tolist()


def _rows(task, condition, layer, multiplier, scores, subjects=None):
    return [
        {
            "item_id": f"{s + ':' if s else ''}{i}",
            "behaviour": "sycophancy",
            "task": task,
            "metric": "p_match" if task.startswith("caa_ab") else "p_correct",
            "layer": layer,
            "site": "residual" if layer else "",
            "positions": "after_instruction" if layer else "",
            "condition": condition,
            "subject": s,
            "multiplier": multiplier,
            "score": float(x),
        }
        for i, (x, s) in enumerate(zip(scores, subjects or [""] * len(scores)))
    ]


def test_planted_table_gives_planted_effects_costs_and_frontier():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.8, 30)
    mmlu = rng.uniform(0.3, 0.7, 20)
    subjects = ["anatomy"] * 8 + ["virology"] * 12
    # setting: (condition, layer, multiplier) -> (effect, kl, mmlu change, efficient)
    planted = {
        ("base", "", 0.0): (0.0, 0.0, 0.0, True),
        ("base", "1", 1.0): (0.10, 0.30, -0.05, False),  # the pos prompt does more for less
        ("base", "1", 2.0): (0.25, 0.90, -0.10, True),
        ("base", "1", -1.0): (-0.12, 0.20, -0.02, True),
        ("pos", "", 0.0): (0.15, 0.25, -0.01, True),
        ("neg", "", 0.0): (-0.05, 0.40, 0.0, False),
        ("pos", "1", 1.0): (0.20, 0.95, -0.08, False),
    }
    rows, costs = [], {}
    for (cond, layer, m), (effect, kl, dm, _) in planted.items():
        rows += _rows("caa_ab_sycophancy", cond, layer, m, base + effect)
        # subject-dependent shifts whose macro mean (per subject, then over subjects) is dm; the flat mean is not
        tilt = 0.0 if (cond, m) == ("base", 0.0) else np.array([0.03] * 8 + [-0.03] * 12)
        rows += _rows("caa_mmlu_2opt", cond, layer, m, mmlu + dm + tilt, subjects)
        site, pos = ("residual", "after_instruction") if layer else ("", "")
        costs[(cond, "sycophancy" if cond != "base" or m else "", layer, site, pos, m)] = kl
    table = validate_long_table(pd.DataFrame(rows))
    got = pareto_table(table, costs, "base", n_resamples=200)
    assert len(got) == len(planted)
    for _, r in got.iterrows():
        effect, kl, dm, efficient = planted[(r["condition"], r["layer"], r["multiplier"])]
        assert r["task"] == "caa_ab_sycophancy" and r["n"] == 30
        assert r["effect"] == pytest.approx(effect, abs=1e-12)
        assert r["kl"] == pytest.approx(kl) and r["mmlu_change"] == pytest.approx(dm, abs=1e-12)
        assert bool(r["efficient"]) is efficient, (r["condition"], r["layer"], r["multiplier"])


def test_a_cross_tasks_table_reads_each_behaviour_on_its_own_task():
    """With cross_tasks a vector is also measured on other behaviours' A/B tasks: the effect is its own task's."""
    from caa_eval.stats.pareto import behaviour_task

    rows = [
        {"behaviour": "corrigible-neutral-HHH", "task": task, "metric": "p_match"}
        for task in ("caa_ab_coordinate_other_ais", "caa_ab_corrigible_neutral_HHH", "caa_mmlu_2opt")
    ]
    table = pd.DataFrame(rows)
    assert behaviour_task(table, "corrigible-neutral-HHH") == ("caa_ab_corrigible_neutral_HHH", "p_match")


def test_a_reply_task_is_read_by_its_log_odds_not_its_saturated_p_match():
    """The demo's reply task scores whole replies: p_match is ~0 or ~1 per item, so its paired difference hides
    the shift that ll_diff shows; CAA's A/B tasks keep p(match)."""
    from caa_eval.stats.pareto import behaviour_task

    rows = [
        {"behaviour": "optimism", "task": "caa_demo_optimism", "metric": m} for m in ("match", "p_match", "ll_diff")
    ]
    rows += [{"behaviour": "optimism", "task": "caa_demo_optimism_open", "metric": "gen_len"}]
    assert behaviour_task(pd.DataFrame(rows), "optimism") == ("caa_demo_optimism", "ll_diff")
    ab = [{"behaviour": "sycophancy", "task": "caa_ab_sycophancy", "metric": m} for m in ("p_match", "ll_diff")]
    assert behaviour_task(pd.DataFrame(ab), "sycophancy") == ("caa_ab_sycophancy", "p_match")
