"""Steering vs prompting at equal cost: every setting of a behaviour (steering multipliers, a pos/neg system
prompt, prompt + steering) as (cost, effect), and which settings are Pareto-efficient.

- effect: mean over items of the paired difference, on the behaviour's own task and primary metric, between the
  setting and the plain model (the reference condition at multiplier 0), with a bootstrap CI;
- cost: the setting's KL on the neutral prompts vs the plain model (`total_kl` recorded by steered-hf: prompt
  and steering together), and its MMLU change (paired difference in p(correct), macro mean over subjects);
- efficient: no other setting that moves the behaviour in the same direction does so at most as much cost
  with at least as large an effect (one of them strictly). Each direction has its own frontier; the plain
  model (cost 0, effect 0) is efficient by definition.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from caa_eval.stats.tests import macro_mean, mean_ci, seeded_rng
from caa_eval.vocab import JUDGE_METRIC, behaviour_of_task, task_family

__all__ = ["SETTING_KEY", "PARETO_COLUMNS", "pareto_efficient", "behaviour_task", "pareto_table"]

SETTING_KEY = ["condition", "layer", "site", "positions", "multiplier"]
"""A setting of one behaviour: the condition (system prompt, if any) and the steering."""
PARETO_COLUMNS = [
    "behaviour",
    *SETTING_KEY,
    "task",
    "metric",
    "n",
    "effect",
    "effect_ci_low",
    "effect_ci_high",
    "kl",
    "mmlu_change",
    "efficient",
]
_MMLU = "caa_mmlu_2opt"


def pareto_efficient(cost: np.ndarray | list[float], effect: np.ndarray | list[float]) -> np.ndarray:
    """Which settings are Pareto-efficient (low cost, large effect), each effect direction on its own.

    A setting with a NaN cost or effect is never efficient and dominates nothing; an effect of 0 counts for
    both directions (the plain model, at cost 0, is efficient).

    Args:
        cost: one cost per setting (e.g. KL in nats).
        effect: one signed effect per setting.
    """
    c, e = np.asarray(cost, dtype=float), np.asarray(effect, dtype=float)
    ok = np.isfinite(c) & np.isfinite(e)
    out = np.zeros(len(c), dtype=bool)
    for i in np.flatnonzero(ok):
        if c[i] == 0 and e[i] == 0:
            out[i] = True
            continue
        gain = (1.0 if e[i] >= 0 else -1.0) * e  # effect in this setting's direction
        rivals = ok & (gain >= 0) & (c <= c[i]) & (gain >= gain[i]) & ((c < c[i]) | (gain > gain[i]))
        out[i] = not rivals.any()
    return out


_AB_FAMILIES = ("caa_ab", "caa_ab_balanced")
# (is a CAA A/B task, metric) -> preference: CAA's p(match) on A/B tasks; log-odds before p_match elsewhere
_METRIC_ORDER = {(True, "p_match"): 0, (False, "ll_diff"): 1, (False, "p_match"): 2, (False, JUDGE_METRIC): 3}


def behaviour_task(table: pd.DataFrame, behaviour: str) -> tuple[str, str] | None:
    """The task and metric a behaviour's effect is read on: its own A/B task (not another behaviour's, which a
    `cross_tasks` sweep also measures under this vector) by CAA's p(match); else its own task's log-odds
    (`ll_diff`: p_match of whole replies saturates at 0 or 1, so a paired difference of it hides the shift),
    else a p_match task, else the judge.

    Args:
        table: the long table (primary metrics).
        behaviour: the behaviour.
    """
    own = table[(table["behaviour"] == behaviour) & (_family(table) != _MMLU)]
    pairs = own[["task", "metric"]].drop_duplicates().itertuples(index=False)
    ranked = sorted(
        pairs,
        key=lambda tm: (
            behaviour_of_task(tm.task, [behaviour]) != behaviour,
            task_family(tm.task) != "caa_ab",
            task_family(tm.task) != "caa_ab_balanced",
            _METRIC_ORDER.get((task_family(tm.task) in _AB_FAMILIES, tm.metric), len(_METRIC_ORDER)),
            tm.task,
        ),
    )
    ranked = [tm for tm in ranked if task_family(tm.task) not in ("caa_mmlu_2opt_full", "caa_tqa_2opt")]
    return (ranked[0].task, ranked[0].metric) if ranked else None


def _family(table: pd.DataFrame) -> pd.Series:
    """The task family of every row."""
    return table["task"].map(task_family)


def _scores(rows: pd.DataFrame) -> pd.Series:
    """Per-item scores of one setting (NaN dropped); multiplier-0 rows of several layers agree, keep one."""
    valid = rows[rows["score"].notna()]
    return valid.groupby("item_id", sort=True)["score"].first()


def _paired(setting: pd.DataFrame, reference: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """Paired differences (setting − reference) over the shared items, and their subjects (None if none)."""
    a, b = _scores(setting), _scores(reference)
    common = a.index.intersection(b.index)
    diff = (a[common] - b[common]).to_numpy(dtype=float)
    subjects = setting.drop_duplicates("item_id").set_index("item_id")["subject"].reindex(common)
    return diff, None if (subjects.fillna("") == "").all() else subjects.to_numpy()


def _mmlu_change(table: pd.DataFrame, behaviour: str, key: dict[str, Any], ref: pd.DataFrame) -> float:
    rows = table[(_family(table) == _MMLU) & (table["behaviour"] == behaviour)]
    for name, value in key.items():
        rows = rows[rows[name] == value]
    if rows.empty or ref.empty:
        return math.nan
    diff, subjects = _paired(rows, ref)
    return macro_mean(diff, subjects) if diff.size else math.nan


def pareto_table(
    table: pd.DataFrame,
    costs: dict[tuple, float],
    reference: str,
    seed: int = 0,
    n_resamples: int = 2000,
) -> pd.DataFrame:
    """Every setting of every behaviour with its effect (CI), KL and MMLU change, and whether it is efficient.

    Args:
        table: the long table (primary metrics; MMLU rows give `mmlu_change`).
        costs: (condition, behaviour, layer, site, positions, multiplier) -> KL vs the plain model; a key with
            behaviour "" serves every behaviour (a shared task's baseline).
        reference: the plain condition (no system prompt, unchanged model), compared at multiplier 0.
        seed: bootstrap seed.
        n_resamples: bootstrap resamples per CI.
    """
    out = []
    for behaviour in sorted(table["behaviour"].unique()):
        found = behaviour_task(table, behaviour)
        if found is None:
            continue
        task, metric = found
        rows = table[(table["behaviour"] == behaviour) & (table["task"] == task) & (table["metric"] == metric)]
        ref = rows[(rows["condition"] == reference) & (rows["multiplier"] == 0)]
        if ref.empty:
            continue
        mmlu = table[(_family(table) == _MMLU) & (table["behaviour"] == behaviour)]
        mmlu_ref = mmlu[(mmlu["condition"] == reference) & (mmlu["multiplier"] == 0)]
        for values, setting in rows.groupby(SETTING_KEY, sort=True):
            key = dict(zip(SETTING_KEY, values))
            diff, subjects = _paired(setting, ref)
            rng = seeded_rng(seed, ("pareto", behaviour, *values))
            low, high, _ = mean_ci(diff, rng, n_resamples, subjects=subjects) if diff.size else (math.nan,) * 3
            kl = costs.get(
                (key["condition"], behaviour, key["layer"], key["site"], key["positions"], key["multiplier"])
            )
            if kl is None:
                kl = costs.get((key["condition"], "", key["layer"], key["site"], key["positions"], key["multiplier"]))
            is_ref = key["condition"] == reference and key["multiplier"] == 0
            out.append(
                {"behaviour": behaviour, **key, "task": task, "metric": metric, "n": int(diff.size)}
                | {"effect": macro_mean(diff, subjects) if diff.size else math.nan}
                | {"effect_ci_low": low, "effect_ci_high": high}
                | {"kl": 0.0 if is_ref else (math.nan if kl is None else float(kl))}
                | {
                    "mmlu_change": 0.0
                    if is_ref and not mmlu_ref.empty
                    else _mmlu_change(mmlu, behaviour, key, mmlu_ref)
                }
            )
    frame = pd.DataFrame(out, columns=[c for c in PARETO_COLUMNS if c != "efficient"])
    frame["efficient"] = False
    for _, part in frame.groupby("behaviour", sort=False):
        frame.loc[part.index, "efficient"] = pareto_efficient(part["kl"].to_numpy(), part["effect"].to_numpy())
    return frame[PARETO_COLUMNS]
