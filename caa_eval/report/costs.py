"""The cost sections of a report (docs/costs.md): the fluency of open-ended answers without a judge, and
steering vs prompting at equal cost (every setting of a behaviour as cost and effect, Pareto-efficient ones
marked, in a table and a plot).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from caa_eval.lmeval.fluency import FLUENCY_METRICS
from caa_eval.report.figures import new_figure, save_png
from caa_eval.report.table4 import reference_condition
from caa_eval.report.tables import mark, md_table
from caa_eval.stats import compute_stats, to_records
from caa_eval.stats.pareto import pareto_table
from caa_eval.stats.scales import labelled_results
from caa_eval.stats.table import format_layer, format_text
from caa_eval.vocab import format_multiplier

__all__ = ["CostSections", "setting_costs", "plain_condition", "fluency_markdown", "pareto_markdown", "cost_sections"]

_FLUENCY_KEY = ["behaviour", "task", "condition", "layer", "site", "positions", "multiplier"]


@dataclass
class CostSections:
    """What the cost sections add to a report: report.json keys, markdown lines, figure files."""

    pareto: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fluency: list[dict[str, Any]] = field(default_factory=list)
    reference: str = ""
    figures: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def setting_costs(run_dir: str | Path) -> dict[tuple, float]:
    """KL vs the plain model of every run in a sweep or run folder, as steered-hf recorded it (`total_kl`:
    system prompt and steering together; `kl` in files written before system prompts were measured).

    Args:
        run_dir: a sweep folder or an lm_eval --output_path folder.

    Returns:
        (condition, behaviour, layer, site, positions, multiplier) -> KL; behaviour "" for shared baselines.
    """
    out: dict[tuple, float] = {}
    for _, results, labels, cell in labelled_results(run_dir):
        behaviour = str(cell.get("behaviour") or "") if cell is not None else labels["vector_behaviour"]
        scale = ((results.get("config") or {}).get("steering") or {}).get("scale") or {}
        kl = scale.get("total_kl", scale.get("kl")) if "system_prompt_error" not in scale else None
        key = (labels["condition"], behaviour, format_layer(labels["layer"]), format_text(labels["site"]))
        out[(*key, format_text(labels["positions"]), float(labels["multiplier"]))] = (
            float(kl) if isinstance(kl, (int, float)) else math.nan
        )
    return out


def plain_condition(source: Any, conditions: list[str]) -> str:
    """The condition running the sweep's model as is (no system prompt, adapter or other checkpoint).

    Args:
        source: the report's input (a sweep folder has a manifest naming its conditions).
        conditions: the table's conditions.
    """
    config = _read(Path(source) / "manifest.json").get("config") if isinstance(source, (str, Path)) else None
    changed = ("finetune", "peft", "pretrained", "system_prompt", "system_instruction")
    plain = [c["name"] for c in (config or {}).get("conditions") or [] if not any(c.get(k) for k in changed)]
    return reference_condition(conditions, plain)


def fluency_markdown(flu: pd.DataFrame, alpha: float) -> list[str]:
    """The fluency section: per setting, each metric's mean and its difference from multiplier 0 (marked).

    Args:
        flu: compute_stats output on the fluency metrics.
        alpha: level of the marks.
    """
    lines = ["## Fluency of open-ended answers (no judge)", ""]
    if flu.empty:
        return lines + ["No open-ended task with fluency metrics in this input.", ""]
    lines += [
        "Per setting: mean over answers, and in brackets the paired difference from multiplier 0 (same items). "
        "**perplexity** = exp(−mean log p) of the answer under the *unsteered* model; **distinct-1/2** = unique "
        "word uni-/bigrams per answer; **rep-4** = share of repeated word 4-grams. `*` Holm-significant over "
        "this table's tests, `†` BH only.",
        "",
    ]
    rows = []
    for key, part in flu.groupby(_FLUENCY_KEY, sort=True):
        by_metric = {r["metric"]: r for _, r in part.iterrows()}
        cells = []
        for metric in FLUENCY_METRICS:
            r = by_metric.get(metric)
            if r is None or not np.isfinite(float(r["mean"])):
                cells.append("–")
            elif r["is_baseline"]:
                cells.append(f"{r['mean']:.3g}")
            else:
                cells.append(f"{r['mean']:.3g} ({float(r['diff_vs_0']):+.3g}{mark(r, alpha)})")
        label = dict(zip(_FLUENCY_KEY, key))
        setting = ", ".join(str(label[k]) for k in ("condition", "layer", "site", "positions") if label[k])
        rows.append([label["behaviour"], label["task"], setting or "–", format_multiplier(label["multiplier"]), *cells])
    head = ["behaviour", "task", "setting", "multiplier", "perplexity", "distinct-1", "distinct-2", "rep-4"]
    return lines + [md_table(head, rows, 4), ""]


def _kind(row: pd.Series, reference: str) -> str:
    prompt = row["condition"] != reference
    if row["multiplier"] == 0:
        return "plain" if not prompt else "prompt"
    return "prompt + steering" if prompt else "steering"


def _setting(row: pd.Series) -> str:
    layer = f"L{row['layer']} " if row["layer"] else ""
    return f"{row['condition']} {layer}×{format_multiplier(float(row['multiplier']))}"


def pareto_markdown(pareto: pd.DataFrame, reference: str, figure: str | None) -> list[str]:
    """The steering-vs-prompting section: the plot and, per behaviour, every setting with the efficient ones marked.

    Args:
        pareto: `caa_eval.stats.pareto.pareto_table` output.
        reference: the plain condition.
        figure: the plot's file name (None: no plot).
    """
    lines = ["## Steering vs prompting at equal cost", ""]
    if pareto.empty:
        return lines + ["No behaviour has a multiplier-0 run of the plain condition to compare with.", ""]
    lines += [
        f"Every setting of a behaviour against the plain model (condition `{reference}`, multiplier 0): **effect** = "
        "mean paired difference on the behaviour's own task [95% bootstrap CI]; **KL** = next-token KL on the "
        "neutral prompts vs the plain model (system prompt and steering together); **MMLU Δ** = paired change in "
        "MMLU p(correct). **◆** = Pareto-efficient (no setting moving the behaviour the same way does at least as "
        "much for at most the same KL).",
        "",
    ]
    if figure:
        lines += [f"![Steering vs prompting]({figure})", ""]
    for behaviour, part in pareto.groupby("behaviour", sort=True):
        lines += [f"### {behaviour} ({part['task'].iloc[0]}, {part['metric'].iloc[0]})", ""]
        rows = []
        for _, r in part.sort_values(["kl", "effect"]).iterrows():
            ci = f"[{r['effect_ci_low']:+.3f}, {r['effect_ci_high']:+.3f}]" if np.isfinite(r["effect_ci_low"]) else ""
            rows.append(
                [
                    _setting(r),
                    _kind(r, reference),
                    "◆" if r["efficient"] else "",
                    f"{r['effect']:+.3f} {ci}".strip(),
                    "–" if not np.isfinite(r["kl"]) else f"{r['kl']:.3g}",
                    "–" if not np.isfinite(r["mmlu_change"]) else f"{r['mmlu_change']:+.3f}",
                    str(r["n"]),
                ]
            )
        lines += [md_table(["setting", "kind", "efficient", "effect", "KL", "MMLU Δ", "n"], rows, 3), ""]
    return lines


_MARKERS = {"plain": "*", "steering": "o", "prompt": "s", "prompt + steering": "^"}


def pareto_figure(pareto: pd.DataFrame, reference: str, out_dir: Path) -> str | None:
    """One panel per behaviour (and a second one against MMLU change when measured): effect with CI against
    cost, marker by kind of setting, efficient settings circled and joined by the frontier.

    Args:
        pareto: `pareto_table` output.
        reference: the plain condition.
        out_dir: where `pareto.png` goes.
    """
    if pareto.empty:
        return None
    behaviours = sorted(pareto["behaviour"].unique())
    with_mmlu = bool(np.isfinite(pareto["mmlu_change"].astype(float)).sum() > len(behaviours))
    axes_x = [("kl", "KL vs plain model (nats)")] + ([("mmlu_change", "MMLU Δ p(correct)")] if with_mmlu else [])
    fig, axes = new_figure(len(behaviours) * len(axes_x))
    for k, behaviour in enumerate(behaviours):
        part = pareto[pareto["behaviour"] == behaviour]
        kinds = part.apply(lambda r: _kind(r, reference), axis=1)
        for j, (column, label) in enumerate(axes_x):
            ax = axes[k * len(axes_x) + j]
            x, y = part[column].astype(float), part["effect"].astype(float)
            err = np.vstack([y - part["effect_ci_low"].astype(float), part["effect_ci_high"].astype(float) - y])
            for kind, marker in _MARKERS.items():
                sel = (kinds == kind).to_numpy()
                if sel.any():
                    ax.errorbar(x[sel], y[sel], yerr=np.nan_to_num(err[:, sel]), fmt=marker, capsize=2, label=kind)
            eff = part[part["efficient"]].sort_values(column) if column == "kl" else part.iloc[0:0]
            ax.plot(eff[column], eff["effect"], "o", mfc="none", ms=11, color="red", label="efficient")
            for sign in (1, -1):
                side = eff[np.sign(eff["effect"]) * sign >= 0]
                ax.plot(side[column], side["effect"], "-", color="red", linewidth=0.8)
            if not np.isfinite(x).any():
                ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", color="grey")
            ax.axhline(0, color="grey", linewidth=0.5)
            ax.set_xlabel(label)
            ax.set_ylabel(f"effect on {part['task'].iloc[0]} ({part['metric'].iloc[0]})")
            ax.set_title(behaviour, fontsize=9)
            if k == 0 and j == 0:
                ax.legend(fontsize=7)
    save_png(fig, out_dir / "pareto.png")
    return "pareto.png"


def _fluency(diag: pd.DataFrame, alpha: float, stats: dict[str, Any]) -> pd.DataFrame:
    """The fluency metrics' cells: paired tests vs multiplier 0, Holm over this family only."""
    rows = diag[diag["metric"].isin(FLUENCY_METRICS)] if not diag.empty else diag
    return compute_stats(rows.reset_index(drop=True), alpha=alpha, **stats) if not rows.empty else rows


def _pareto_records(pareto: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """report.json `pareto`: per behaviour, its settings as the documented records."""
    out = {}
    for behaviour, part in pareto.groupby("behaviour", sort=True):
        out[str(behaviour)] = [
            {
                "condition": r["condition"],
                "layer": r["layer"],
                "multiplier": r["multiplier"],
                "effect": r["effect"],
                "effect_ci": [r["effect_ci_low"], r["effect_ci_high"]],
                "kl": r["kl"],
                "mmlu_change": r["mmlu_change"],
                "efficient": r["efficient"],
            }
            for r in to_records(part)
        ]
    return out


def cost_sections(
    source: Any, table: pd.DataFrame, diag: pd.DataFrame, out_dir: Path, alpha: float, **stats: Any
) -> CostSections:
    """Fluency and steering-vs-prompting for `build_report` (one call; see the module docstring).

    Args:
        source: the report's input (costs are read from a sweep/run folder; a long table has none).
        table: the tested long table (primary metrics).
        diag: the other per-item metrics (the fluency metrics are among them).
        out_dir: the report folder (for the plot).
        alpha: level of the marks.
        **stats: seed, n_resamples, n_permutations, primary_test (as for compute_stats).
    """
    found = CostSections()
    flu = _fluency(diag, alpha, stats)
    columns = [
        *_FLUENCY_KEY,
        "metric",
        "n",
        "mean",
        "diff_vs_0",
        "diff_ci_low",
        "diff_ci_high",
        "p_holm",
        "significant",
    ]
    found.fluency = to_records(flu[columns]) if not flu.empty else []
    found.lines = fluency_markdown(flu, alpha)
    if isinstance(source, pd.DataFrame) or not Path(source).is_dir():
        found.lines += ["## Steering vs prompting at equal cost", "", "Needs the run or sweep folder (KL).", ""]
        return found
    found.reference = plain_condition(source, sorted(table["condition"].unique()))
    pareto = pareto_table(
        table, setting_costs(source), found.reference, stats.get("seed", 0), stats.get("n_resamples", 2000)
    )
    figure = pareto_figure(pareto, found.reference, out_dir)
    if figure:
        found.figures.append({"file": figure, "kind": "pareto", "title": "Steering vs prompting at equal cost"})
    found.lines += pareto_markdown(pareto, found.reference, figure)
    found.pareto = _pareto_records(pareto)
    return found
