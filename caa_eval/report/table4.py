"""The paper's Table 4: steering × finetuning. Rows behaviour, columns condition × multiplier.

Each entry gets two paired comparisons, each on the same items:
- against multiplier 0 *within its condition*: does steering still move a model that finetuning moved?
- against the unfinetuned (reference) condition *at the same multiplier*: is "finetune + steer" different
  from steering the unfinetuned model (and, at 0, is the finetune itself different from the chat model)?
All tests of one table form one family, corrected with Holm (and BH, shown in the comparison list). The
family is separate from the report's cell-vs-0 family. `*` marks an entry that differs from its
condition's multiplier 0, `§` one that differs from the reference condition.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from caa_eval.report.finetune_shifts import shifts_markdown
from caa_eval.report.tables import FAMILY_TITLES, SHARED_FAMILIES, baseline_row, digits, family_of, md_table
from caa_eval.stats import GROUP_KEY, NOISE, Baselines, adjust_pvalues, mean_ci, paired_tests, seeded_rng
from caa_eval.vocab import format_multiplier

__all__ = [
    "VS_ZERO_MARK",
    "VS_REFERENCE_MARK",
    "REFERENCE_NAMES",
    "sweep_conditions",
    "reference_condition",
    "table4_tables",
    "table4_markdown",
    "comparisons_markdown",
    "table4_section",
]

VS_ZERO_MARK = "*"
VS_REFERENCE_MARK = "§"
REFERENCE_NAMES = ("base", "none", "chat", "unfinetuned", "plain")
"""Condition names taken as the unfinetuned model when the run folder does not say which one it is."""
_PANEL = ["layer", "site", "positions"]


def sweep_conditions(run_dir: str | Path) -> tuple[list[str], list[str]] | None:
    """(all conditions in config order, those running the sweep's model unchanged) of a sweep folder.

    "Unchanged" means no finetune, adapter or other checkpoint. None when the folder has no manifest.json.

    Args:
        run_dir: a sweep folder.
    """
    try:
        config = json.loads((Path(run_dir) / "manifest.json").read_text(encoding="utf-8"))["config"]
        conditions = list(config.get("conditions") or [])
        return (
            [c["name"] for c in conditions],
            [c["name"] for c in conditions if not (c.get("finetune") or c.get("peft") or c.get("pretrained"))],
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def reference_condition(conditions: list[str], plain: list[str] | None = None) -> str:
    """The unfinetuned condition the others are compared with.

    Args:
        conditions: the table's conditions.
        plain: conditions known to run the unchanged model (`sweep_conditions`), in config order.
    """
    for name in [*(plain or []), *REFERENCE_NAMES]:
        if name in conditions:
            return name
    return sorted(conditions)[0]


def _scores(table: pd.DataFrame, baselines: Baselines, key: dict[str, Any], multiplier: float) -> pd.Series:
    """Per-item scores of one cell (multiplier 0: the baseline stats paired that cell with)."""
    if multiplier == 0:
        return baselines.get(tuple(key[k] for k in GROUP_KEY))[0]
    mask = table["multiplier"] == multiplier
    for k in GROUP_KEY:
        mask &= table[k] == key[k]
    return table[mask].set_index("item_id")["score"]


def _versus(x: pd.Series, ref: pd.Series, rng: np.random.Generator, settings: dict[str, Any]) -> dict[str, Any]:
    """Paired difference x − ref on the items both have: mean, bootstrap CI and the primary test's p."""
    pair = pd.DataFrame({"x": x, "r": ref}).dropna()
    d = (pair["x"] - pair["r"]).to_numpy(dtype=float, copy=True)
    d[np.abs(d) <= NOISE] = 0.0
    tests = paired_tests(d, rng, settings["n_permutations"])
    low, high, _ = mean_ci(d, rng, settings["n_resamples"], settings["confidence"])
    p = tests.p_wilcoxon if settings["primary_test"] == "wilcoxon" else tests.p_permutation
    return {"diff": float(d.mean()) if d.size else math.nan, "ci_low": low, "ci_high": high, "n": int(d.size), "p": p}


def _num(v: Any) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def table4_tables(
    table: pd.DataFrame,
    cells: pd.DataFrame,
    alpha: float = 0.05,
    *,
    reference: str | None = None,
    plain: list[str] | None = None,
    order: list[str] | None = None,
    primary_test: str = "wilcoxon",
    seed: int = 0,
    n_resamples: int = 2000,
    n_permutations: int = 9999,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """One Table-4 pivot per behaviour family and metric that has two or more conditions.

    Args:
        table: the long table the cells were computed from (primary metrics).
        cells: `caa_eval.stats.compute_stats(table)`.
        alpha: level of the marks.
        reference: the unfinetuned condition (default: `reference_condition(conditions, plain)`).
        plain: conditions known to run the unchanged model (`sweep_conditions(run_dir)[1]`).
        order: column order of the conditions after the reference (default: sorted by name).
        primary_test: "wilcoxon" or "permutation": whose p-values are corrected.
        seed: seed of the bootstrap and permutation resampling.
        n_resamples: bootstrap resamples per CI.
        n_permutations: random sign flips per permutation test.
        confidence: coverage of the CIs.
    """
    settings = {
        "primary_test": primary_test,
        "n_resamples": n_resamples,
        "n_permutations": n_permutations,
        "confidence": confidence,
        "seed": seed,
        "alpha": alpha,
    }
    steered = cells[~cells["is_baseline"]].copy()
    if steered.empty:
        return []
    steered["family"] = [family_of(t, m) for t, m in zip(steered["task"], steered["metric"])]
    baselines = Baselines(table)
    out = []
    for (family, metric), group in steered.groupby(["family", "metric"], sort=True):
        layout = _layout(group, reference, plain, order)
        if family in SHARED_FAMILIES or layout is None:
            continue
        pivot = _pivot(group, layout, table, cells, baselines, settings)
        pivot |= {"family": family, "metric": metric, "title": FAMILY_TITLES.get(family, f"{family} — {metric}")}
        out.append(pivot | {"digits": digits(metric), "primary_test": primary_test})
    return out


def _layout(
    group: pd.DataFrame, reference: str | None, plain: list[str] | None, order: list[str] | None
) -> dict[str, Any] | None:
    """Columns (reference first, then `order`), row index and multipliers of one pivot; None below 2 conditions."""
    conditions = sorted(set(group["condition"]))
    if len(conditions) < 2:
        return None
    ref = reference if reference is not None and reference in conditions else reference_condition(conditions, plain)
    rank = {name: k for k, name in enumerate(order or [])}
    conditions = [ref] + sorted((c for c in conditions if c != ref), key=lambda c: (rank.get(c, len(rank)), c))
    index = ["behaviour"] + (["task"] if (group.groupby("behaviour")["task"].nunique() > 1).any() else [])
    index += [c for c in _PANEL if group[c].nunique() > 1]
    multipliers = sorted(set(group["multiplier"]) | {0.0})
    return {"reference": ref, "conditions": conditions, "index": index, "multipliers": multipliers}


def _pivot(
    group: pd.DataFrame,
    layout: dict[str, Any],
    table: pd.DataFrame,
    cells: pd.DataFrame,
    baselines: Baselines,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The rows of one pivot, every test Holm/BH-corrected over the pivot and marked."""
    index, conditions, multipliers = layout["index"], layout["conditions"], layout["multipliers"]
    rows: list[dict[str, Any]] = []
    tests: list[tuple[Any, ...]] = []  # (entries, multiplier label, kind, raw p)
    for key, part in group.groupby(index, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        values = _entries(cells, part, conditions, multipliers, settings["primary_test"], tests)
        _versus_reference(values, part, layout, key, table, baselines, settings, tests)
        rows.append({"index": dict(zip(index, key)), "values": values})
    raw = np.array([np.nan if p is None else p for *_, p in tests], dtype=np.float64)
    holm, bh = adjust_pvalues(raw)
    for (entries, label, kind, _), p_holm, p_bh in zip(tests, holm, bh):
        entries[label] |= {f"p_{kind}_holm": _num(p_holm), f"p_{kind}_bh": _num(p_bh)}
    for row in rows:
        for entries in row["values"].values():
            for entry in entries.values():
                entry["mark"] = (VS_ZERO_MARK if (entry.get("p_vs_0_holm") or 1.0) < settings["alpha"] else "") + (
                    VS_REFERENCE_MARK if (entry.get("p_vs_ref_holm") or 1.0) < settings["alpha"] else ""
                )
    layout = layout | {"multipliers": [format_multiplier(m) for m in multipliers]}
    return layout | {"n_tests": int(np.isfinite(raw).sum()), "rows": rows}


def _entries(
    cells: pd.DataFrame,
    part: pd.DataFrame,
    conditions: list[str],
    multipliers: list[float],
    primary_test: str,
    tests: list[tuple[Any, ...]],
) -> dict[str, dict[str, Any]]:
    """condition -> multiplier label -> mean, CI, n and (off 0) the steering-vs-0 test of one pivot row."""
    values: dict[str, dict[str, Any]] = {}
    for cond in conditions:
        mine = part[part["condition"] == cond]
        if mine.empty:
            continue
        entries = values.setdefault(cond, {})
        base = baseline_row(cells, mine.iloc[0])
        for m in multipliers:
            cell = base if m == 0 else next((c for _, c in mine.iterrows() if c["multiplier"] == m), None)
            if cell is None:
                continue
            entry: dict[str, Any] = {
                "mean": _num(cell["mean"]),
                "ci_low": _num(cell["ci_low"]),
                "ci_high": _num(cell["ci_high"]),
                "n": int(cell["n"]),
            }
            if m != 0:
                entry |= {
                    "diff_vs_0": _num(cell["diff_vs_0"]),
                    "p_vs_0": _num(cell[f"p_{primary_test}"]),
                    "diff_vs_0_ci": [_num(cell["diff_ci_low"]), _num(cell["diff_ci_high"])],
                }
                tests.append((entries, format_multiplier(m), "vs_0", entry["p_vs_0"]))
            entries[format_multiplier(m)] = entry
    return values


def _versus_reference(
    values: dict[str, dict[str, Any]],
    part: pd.DataFrame,
    layout: dict[str, Any],
    key: tuple[Any, ...],
    table: pd.DataFrame,
    baselines: Baselines,
    settings: dict[str, Any],
    tests: list[tuple[Any, ...]],
) -> None:
    """Add each condition's paired comparison with the reference condition at the same multiplier."""
    ref = layout["reference"]
    if ref not in values:
        return
    ref_key = dict(zip(GROUP_KEY, part[part["condition"] == ref].iloc[0][GROUP_KEY]))
    for cond in layout["conditions"][1:]:
        if cond not in values:
            continue
        mine_key = dict(zip(GROUP_KEY, part[part["condition"] == cond].iloc[0][GROUP_KEY]))
        for m in layout["multipliers"]:
            label = format_multiplier(m)
            if label not in values[cond] or label not in values[ref]:
                continue
            rng = seeded_rng(settings["seed"], ("table4", *key, cond, m))
            vs = _versus(_scores(table, baselines, mine_key, m), _scores(table, baselines, ref_key, m), rng, settings)
            values[cond][label] |= {
                "diff_vs_ref": _num(vs["diff"]),
                "diff_vs_ref_ci": [_num(vs["ci_low"]), _num(vs["ci_high"])],
                "n_vs_ref": vs["n"],
                "p_vs_ref": _num(vs["p"]),
            }
            tests.append((values[cond], label, "vs_ref", values[cond][label]["p_vs_ref"]))


def table4_markdown(t: dict[str, Any]) -> str:
    """The pivot: rows behaviour, columns condition × multiplier, mean with marks.

    Args:
        t: one `table4_tables` entry.
    """
    head = [*t["index"], *(f"{c} {m}" for c in t["conditions"] for m in t["multipliers"])]
    rows = []
    for row in t["rows"]:
        cells = []
        for c in t["conditions"]:
            for m in t["multipliers"]:
                e = row["values"].get(c, {}).get(m)
                cells.append("–" if e is None or e["mean"] is None else f"{e['mean']:.{t['digits']}f}{e['mark']}")
        rows.append([str(row["index"][k]) or "–" for k in t["index"]] + cells)
    return md_table(head, rows, len(t["index"]))


def comparisons_markdown(t: dict[str, Any]) -> str:
    """Every test of one Table-4 pivot: the difference with its CI, n, raw p and Holm/BH over the table.

    Args:
        t: one `table4_tables` entry.
    """
    n = t["digits"]

    def fmt(v: float | None, signed: bool = True) -> str:
        return "–" if v is None else (f"{v:+.{n}f}" if signed else f"{v:.{n}f}")

    def p(v: float | None) -> str:
        return "–" if v is None else ("<1e-4" if v < 1e-4 else f"{v:.4f}")

    head = [*t["index"], "condition", "mult", "compared with", "diff [95% CI]", "n", "p", "p Holm", "p BH"]
    rows = []
    for row in t["rows"]:
        label = [str(row["index"][k]) or "–" for k in t["index"]]
        for c in t["conditions"]:
            for m in t["multipliers"]:
                e = row["values"].get(c, {}).get(m)
                if e is None:
                    continue
                if "p_vs_0" in e:
                    low, high = e["diff_vs_0_ci"]
                    rows.append(
                        [
                            *label,
                            c,
                            m,
                            f"{c} 0",
                            f"{fmt(e['diff_vs_0'])} [{fmt(low)}, {fmt(high)}]",
                            str(e["n"]),
                            p(e["p_vs_0"]),
                            p(e.get("p_vs_0_holm")),
                            p(e.get("p_vs_0_bh")),
                        ]
                    )
                if "p_vs_ref" in e:
                    low, high = e["diff_vs_ref_ci"]
                    rows.append(
                        [
                            *label,
                            c,
                            m,
                            f"{t['reference']} {m}",
                            f"{fmt(e['diff_vs_ref'])} [{fmt(low)}, {fmt(high)}]",
                            str(e["n_vs_ref"]),
                            p(e["p_vs_ref"]),
                            p(e.get("p_vs_ref_holm")),
                            p(e.get("p_vs_ref_bh")),
                        ]
                    )
    return md_table(head, rows, len(t["index"]) + 3)


def table4_section(tables: list[dict[str, Any]], alpha: float, shifts: list[dict[str, Any]] | None = None) -> list[str]:
    """report.md lines for the Table-4 pivots (empty when no family has two or more conditions).

    Args:
        tables: `table4_tables` output (report.json's `table4`).
        alpha: level of the marks.
        shifts: `finetune_shifts(run_dir)`: what each adapter did to p(match), so a flat row is explained.
    """
    if not tables:
        return []
    lines = [
        "## Steering × finetuning (the paper's Table 4)",
        "",
        f"Rows behaviour, columns condition × multiplier; mean score. `{VS_ZERO_MARK}` differs from multiplier 0 "
        f"of the same condition, `{VS_REFERENCE_MARK}` differs from the reference (unfinetuned) condition at the "
        f"same multiplier: paired tests on the same items, Holm over all tests of the table (its own family), "
        f"α = {alpha}.",
        "",
    ]
    if shifts:
        lines += [
            "What each finetune did, measured when it was trained (p(match) in the A/B format on its training "
            "pairs and on a held-out slice of them that it never saw; `caa_finetune.json`):",
            "",
            *shifts_markdown(shifts),
            "",
        ]
    for t in tables:
        lines += [
            f"### {t['title']} — reference condition: {t['reference']}",
            "",
            table4_markdown(t),
            "",
            f"{t['n_tests']} tests ({t['primary_test']}), Holm and BH over this table:",
            "",
            comparisons_markdown(t),
            "",
        ]
    return lines
