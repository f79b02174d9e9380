"""The entanglement matrix on a planted long table: every entry is the paired difference vs the one shared
baseline of its task (numpy, here), Holm runs over the whole matrix (statsmodels, here), the diagonal is the
vector on its own behaviour's task, and a table where no vector is measured on another behaviour's task has
no matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from caa_eval.stats import compute_stats
from caa_eval.stats.entanglement import ENTANGLEMENT_KEYS, entanglement_matrix, entanglement_records

N = 30
TASKS = ("caa_ab_refusal", "caa_ab_sycophancy", "caa_tqa_2opt")
SHIFT = {"refusal": (0.30, 0.02, -0.05), "sycophancy": (0.01, 0.20, 0.08)}  # per task, for multiplier +1


def _planted() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    for t, task in enumerate(TASKS):
        base = rng.uniform(0.2, 0.8, N)
        rows += [dict(item_id=f"i{k}", behaviour="*", task=task, multiplier=0.0, score=base[k]) for k in range(N)]
        for vector, shifts in SHIFT.items():
            for m in (-1.0, 1.0):
                scores = base + m * shifts[t] + rng.normal(0, 0.05, N)
                rows += [
                    dict(item_id=f"i{k}", behaviour=vector, task=task, multiplier=m, score=scores[k]) for k in range(N)
                ]
    return pd.DataFrame(rows).assign(layer="13", metric="p")


def test_matrix_is_paired_differences_with_holm_over_the_whole_matrix():
    table = _planted()
    matrix = entanglement_matrix(compute_stats(table, n_resamples=200, n_permutations=200), alpha=0.05)
    assert len(matrix) == 2 * 2 * len(TASKS)
    base = table[table.multiplier == 0].set_index(["task", "item_id"])["score"]
    for r in matrix.itertuples():
        mine = table[(table.behaviour == r.vector) & (table.task == r.task) & (table.multiplier == r.multiplier)]
        d = mine["score"].to_numpy() - base.loc[r.task].loc[mine["item_id"]].to_numpy()
        assert r.n == N and r.difference == pytest.approx(d.mean(), abs=1e-12)
        assert r.ci_low < r.difference < r.ci_high
    holm = multipletests(matrix["p"].to_numpy(), method="holm")[1]
    assert matrix["p_holm"].to_numpy() == pytest.approx(holm, abs=1e-15)
    per_vector = np.concatenate(
        [multipletests(part["p"].to_numpy(), method="holm")[1] for _, part in matrix.groupby("vector", sort=False)]
    )
    assert not np.allclose(np.sort(per_vector), np.sort(holm))  # the planted p-values tell the families apart
    assert (matrix["significant"] == (matrix["p_holm"] < 0.05)).all()
    diagonal = {(r.vector, r.task) for r in matrix.itertuples() if r.diagonal}
    assert diagonal == {("refusal", "caa_ab_refusal"), ("sycophancy", "caa_ab_sycophancy")}
    records = entanglement_records(matrix)
    assert all(list(rec) == ENTANGLEMENT_KEYS and len(rec["ci"]) == 2 for rec in records)


def test_no_vector_on_another_behaviours_task_is_no_matrix():
    table = _planted()
    own = table[(table.task == "caa_tqa_2opt") | (table.task == "caa_ab_" + table.behaviour) | (table.behaviour == "*")]
    assert entanglement_matrix(compute_stats(own, n_resamples=200, n_permutations=200)).empty
