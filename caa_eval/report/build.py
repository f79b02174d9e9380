"""Build report.md, report.json and the figures for a sweep folder, a folder of lm-eval runs, or a long table.

The report answers "which steering effects are real": paper-shaped tables carry bootstrap CIs and a Holm
mark, and report.json lists for every number the sample files and item count it came from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from caa_eval import __version__
from caa_eval.errors import CAAEvalError
from caa_eval.files import write_atomic
from caa_eval.lmeval.fluency import FLUENCY_METRICS
from caa_eval.report.costs import cost_sections
from caa_eval.report.entanglement import entanglement_section
from caa_eval.report.figures import dose_figures, layer_figures
from caa_eval.report.finetune_shifts import finetune_shifts
from caa_eval.report.html import write_html
from caa_eval.report.scale import effect_per_kl, scale_figures, scale_markdown, scale_records
from caa_eval.report.steerability import steerability_section
from caa_eval.report.table4 import sweep_conditions, table4_section, table4_tables
from caa_eval.report.tables import (
    cells_markdown,
    diagnostics_markdown,
    dose_markdown,
    pivot_tables,
    table_markdown,
)
from caa_eval.stats import (
    CELL_KEY,
    SCALE_COLUMNS,
    compute_dose_response,
    compute_stats,
    load_long_table,
    long_table_from_runs,
    macro_mean,
    steering_scales,
    to_records,
    validate_long_table,
    warn_no_baseline,
)
from caa_eval.vocab import primary_metric

__all__ = ["build_report", "render_markdown"]


def _load(source: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str, list[str]]:
    """(table to test, diagnostic rows, input label, loader warnings). For run folders only each task's primary
    metric is tested; the other per-item metrics (A+B mass, match) are summarised as plain means."""
    if isinstance(source, pd.DataFrame):
        return validate_long_table(source), pd.DataFrame(), "DataFrame", []
    path = Path(source)
    if path.is_dir():
        table = long_table_from_runs(path, metrics="all")
        primary = pd.Series(
            [
                primary_metric(t) in (None, m) and m not in FLUENCY_METRICS
                for t, m in zip(table["task"], table["metric"])
            ],
            index=table.index,
            dtype=bool,
        )
        return table[primary].reset_index(drop=True), table[~primary], str(path), list(table.attrs.get("warnings", []))
    return load_long_table(path), pd.DataFrame(), str(path), []


def _default_out(source: str | Path | pd.DataFrame) -> Path:
    if isinstance(source, pd.DataFrame):
        raise CAAEvalError("build_report on a DataFrame needs out_dir")
    path = Path(source)
    return path / "report" if path.is_dir() else path.with_name(f"{path.stem}_report")


def _diagnostics(diag: pd.DataFrame) -> list[dict[str, Any]]:
    """Mean (per-subject macro mean where items have subjects) and item count of each secondary-metric cell."""
    rows = []
    for key, part in [] if diag.empty else diag.groupby(CELL_KEY, sort=True):
        valid = part[part["score"].notna()]
        subjects = None if (valid["subject"] == "").all() else valid["subject"].to_numpy()
        rows.append(
            dict(zip(CELL_KEY, key))
            | {"mean": macro_mean(valid["score"].to_numpy(dtype=float), subjects), "count": len(valid)}
        )
    return to_records(pd.DataFrame(rows))


def _previous_figures(out: Path) -> set[str]:
    try:
        old = json.loads((out / "report.json").read_text(encoding="utf-8"))
        return {f["file"] for f in old.get("figures", []) if "/" not in f["file"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _vector_layer(source: Any) -> int | None:
    """A sweep's `vector_layer` (layer transfer) from its manifest, None elsewhere."""
    if isinstance(source, pd.DataFrame) or not (Path(source) / "manifest.json").is_file():
        return None
    manifest = json.loads((Path(source) / "manifest.json").read_text(encoding="utf-8"))
    return (manifest.get("config") or {}).get("vector_layer")


def _scales(source: Any) -> tuple[pd.DataFrame, str]:
    """The steering scale steered-hf recorded per setting, and what to say when there is none."""
    if isinstance(source, pd.DataFrame) or not Path(source).is_dir():
        return pd.DataFrame(columns=SCALE_COLUMNS), (
            "Not available for a long table (it carries no steering settings); a report "
            "built from the run or sweep folder states it."
        )
    return steering_scales(source), (
        "No results file here records it: steered-hf writes `config.steering.scale` "
        "into every results file (runs made by plain `hf` or by an older caa-eval do not "
        "have it; rerun them with `--model steered-hf`)."
    )


@dataclass(frozen=True)
class _Settings:
    """The statistics settings of one report (they go into report.json as they are)."""

    alpha: float
    seed: int
    n_resamples: int
    n_permutations: int
    primary_test: str

    def resampling(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "n_resamples": self.n_resamples,
            "n_permutations": self.n_permutations,
            "primary_test": self.primary_test,
        }

    def as_json(self) -> dict[str, Any]:
        return {"alpha": self.alpha, **self.resampling(), "confidence": 0.95}


@dataclass
class _Sections:
    """What the statistics beyond the cells add: figures, report.json keys and report.md lines."""

    figures: list[dict[str, Any]] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def _conditions(source: Any) -> tuple[Any, Any]:
    """A sweep's condition order and unfinetuned conditions (None, None elsewhere)."""
    if isinstance(source, pd.DataFrame) or not Path(source).is_dir():
        return None, None
    return sweep_conditions(source) or (None, None)


def _sections(
    source: Any, table: pd.DataFrame, diag: pd.DataFrame, cells: pd.DataFrame, out: Path, s: _Settings, notes: list
) -> _Sections:
    """Figures and the sections after the pivots: scale, steerability card, entanglement, costs."""
    scales, why_no_scale = _scales(source)
    per_kl = effect_per_kl(cells, scales)
    card, card_records, card_lines = steerability_section(table, cells, source, out, notes, s.seed, s.n_resamples)
    tangle, tangle_lines, tangle_figures = entanglement_section(cells, out, s.alpha, s.primary_test)
    costs = cost_sections(source, table, diag, out, s.alpha, **s.resampling())  # fluency; steering vs prompting
    figures = (
        dose_figures(cells, out, notes)
        + layer_figures(cells, out, _vector_layer(source))
        + scale_figures(per_kl, out, notes)
        + card
        + tangle_figures
    )
    records = {
        "scale": scale_records(scales, per_kl) | {"missing": why_no_scale if scales.empty else ""},
        "entanglement": tangle,
        "fluency": costs.fluency,
        "pareto": costs.pareto,
        "costs": {"reference_condition": costs.reference, "figures": costs.figures},
        **card_records,
    }
    lines = scale_markdown(scales, per_kl, s.alpha, why_no_scale) + card_lines + tangle_lines + costs.lines
    return _Sections(figures, records, lines)


def _document(
    label: str, table: pd.DataFrame, diag: pd.DataFrame, cells: pd.DataFrame, s: _Settings, parts: dict[str, Any]
) -> dict[str, Any]:
    """report.json: settings, correction family, cells with their source files, and every section's records."""
    records = to_records(cells)
    for rec in records:
        rec["sources"] = [x for x in (rec["sources"] or "").split(";") if x]
        rec["baseline_sources"] = [x for x in (rec["baseline_sources"] or "").split(";") if x]
    return {
        "caa_eval_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": label,
        "settings": s.as_json(),
        "correction": {
            "family": "all cell-vs-multiplier-0 tests in this report",
            "n_tests": int(cells.attrs["n_tests"]),
            "methods": {"p_holm": "Holm (family-wise error)", "p_bh": "Benjamini-Hochberg (false discovery rate)"},
            "applied_to": f"p_{s.primary_test}",
            "mark": {"*": f"p_holm < {s.alpha}", "†": f"p_bh < {s.alpha} only"},
        },
        "n_items_total": int(table["item_id"].nunique()),
        "n_rows": int(len(table)),
        "cells": records,
        "diagnostics": _diagnostics(diag),
        **parts,
    }


def build_report(
    source: str | Path | pd.DataFrame,
    out_dir: str | Path | None = None,
    *,
    alpha: float = 0.05,
    seed: int = 0,
    n_resamples: int = 2000,
    n_permutations: int = 9999,
    primary_test: str = "wilcoxon",
    token_views: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write report.md, report.json, report.html and PNG figures into out_dir; returns the path of report.md.

    Args:
        source: a sweep folder, an lm_eval --output_path folder, a CSV/JSONL long table, or a DataFrame.
        out_dir: output folder (default RUN_DIR/report or TABLE_report/; required for a DataFrame).
        alpha: level of the Holm mark.
        seed: seed of the bootstrap and permutation resampling.
        n_resamples: bootstrap resamples per CI.
        n_permutations: random sign flips per permutation test.
        primary_test: "wilcoxon" or "permutation": whose p-values are corrected and marked.
        token_views: per-token views (title, HTML fragment) for report.html (`caa-eval report --tokens N`).
    """
    s = _Settings(alpha, seed, n_resamples, n_permutations, primary_test)
    table, diag, label, warnings_ = _load(source)
    out = Path(out_dir) if out_dir is not None else _default_out(source)
    cells = compute_stats(table, alpha=alpha, **s.resampling())
    dose = compute_dose_response(table, seed=seed, n_resamples=n_resamples)
    order, plain = _conditions(source)
    table4 = table4_tables(table, cells, alpha, plain=plain, order=order, **s.resampling())  # >= 2 conditions
    notes = list(warnings_) + warn_no_baseline(cells)
    out.mkdir(parents=True, exist_ok=True)
    old_figures = _previous_figures(out)
    extra = _sections(source, table, diag, cells, out, s, notes)
    for stale in old_figures - {f["file"] for f in extra.figures}:
        (out / stale).unlink(missing_ok=True)
    parts: dict[str, Any] = {"dose_response": to_records(dose), "tables": pivot_tables(cells, alpha), "table4": table4}
    parts |= {"figures": extra.figures, "warnings": notes, **extra.records}
    parts["finetune_shifts"] = finetune_shifts(source) if table4 and not isinstance(source, pd.DataFrame) else []
    report = _document(label, table, diag, cells, s, parts)
    write_atomic(out / "report.json", json.dumps(report, indent=2, allow_nan=False, ensure_ascii=False))
    md = write_atomic(out / "report.md", render_markdown(report, cells, dose, alpha, extra.lines))
    write_html(report, out, None if isinstance(source, pd.DataFrame) else source, token_views)
    return md


def _method_lines(report: dict[str, Any], alpha: float) -> list[str]:
    s, n_tests = report["settings"], report["correction"]["n_tests"]
    return [
        "## How the numbers were computed",
        "",
        "- **Cells.** A cell is one (behaviour, task, metric, layer, site, positions, condition, multiplier). "
        "Its *mean* is the mean score over its items with a score; for MMLU it is the mean per subject, then the "
        "unweighted mean over subjects. The interval is a 95% bootstrap CI "
        f"(BCa, {s['n_resamples']} resamples over items, within subjects for MMLU, seed {s['seed']}).",
        "- **Pairing.** Each steered cell is compared with the multiplier-0 baseline of the same behaviour, task, "
        "metric and condition *on the same items* (paired by item id): the baseline at the same layer/site/positions "
        "when it exists, otherwise the multiplier-0 run(s) of any layer (which must agree per item). The 0 column of "
        "the tables shows that baseline. *diff vs 0* is the mean per-item difference (per-subject macro mean for "
        "MMLU) with a paired bootstrap CI.",
        "- **Tests.** Wilcoxon signed-rank (two-sided, zero differences dropped; exact distribution for up to 50 "
        "untied non-zero differences, otherwise the normal approximation with tie correction) and a sign-flip "
        f"permutation test on the mean difference ({s['n_permutations']} random sign flips, exact for small n). Both "
        "are rank/resampling tests, so they suit bounded probabilities and 0–10 judge scores alike.",
        f"- **Correction family.** All {n_tests} cell-vs-0 tests in this report (every "
        f"behaviour, task, layer and condition together). `p Holm` controls the family-wise error, `p BH` the false "
        f"discovery rate; both adjust the {s['primary_test']} p-values. `*` marks p Holm < {alpha}; `†` marks "
        f"p BH < {alpha} where Holm is not.",
        "- **Missing judge scores** are dropped pairwise (an item counts only if both the cell and its baseline have "
        "a score); column *missing* counts the dropped items.",
        "- **dz** = mean difference / SD of differences. **wrong way** = fraction of items that moved against the "
        "multiplier's sign (positive multipliers are expected to raise the score). **MDE** = the smallest mean "
        "difference a paired t-test on this many items would detect with 80% power at α, given the observed SD.",
        "- **Dose-response.** Per item, the OLS slope of score on multiplier (including 0); mean slope with a "
        "bootstrap CI; Page's L trend test (items as blocks, multipliers ordered) reported two-sided, Holm over "
        "its own family of configurations.",
        "- Every number is traceable: `report.json` lists for each cell its source files, baseline files and item "
        "counts. Definitions: docs/statistics.md.",
        "",
    ]


def _pivot_lines(report: dict[str, Any], alpha: float) -> list[str]:
    """The paper-shaped pivots: behaviour tables (Table 4 shape), Table 4 itself, MMLU (Table 5 shape)."""
    lines: list[str] = []
    behaviour_tables = [t for t in report["tables"] if t["kind"] == "behaviour"]
    mmlu_tables = [t for t in report["tables"] if t["kind"] == "mmlu"]
    if behaviour_tables:
        lines += [
            "## Behaviour scores by multiplier (Table 4 shape)",
            "",
            "Mean [95% CI]; `*` significant after Holm, `†` after BH only.",
            "",
        ]
        for t in behaviour_tables:
            lines += [f"### {t['title']}", "", table_markdown(t), ""]
    lines += table4_section(report.get("table4") or [], alpha, report.get("finetune_shifts"))
    if mmlu_tables:
        lines += [
            "## MMLU p(correct) by behaviour vector and multiplier (Table 5 shape)",
            "",
            "Mean p(correct) per subject, then the unweighted mean over subjects (CAA's average); "
            "[95% CI] from resampling items within subjects.",
            "",
        ]
        for t in mmlu_tables:
            lines += [f"### {t['title']}", "", table_markdown(t), ""]
    return lines


def _figure_lines(figures: list[dict[str, Any]]) -> list[str]:
    """The figures section (steerability figures sit in their card)."""
    shown = [f for f in figures if f["kind"] != "steerability"]
    if not shown:
        return []
    lines = ["## Figures", ""]
    for f in shown:
        kind = {
            "dose_response": "Dose-response (behaviour and MMLU together)",
            "layer_sweep": "Layer sweep",
            "effect_vs_kl": "Effect per unit of KL",
            "entanglement": "Entanglement heat map",
        }.get(f["kind"], f"Layer transfer (the layer-{f.get('vector_layer')} vector at every layer)")
        lines += [f"**{kind}: {f['title']}**", "", f"![{kind}]({f['file']})", ""]
    return lines


def render_markdown(
    report: dict[str, Any], cells: pd.DataFrame, dose: pd.DataFrame, alpha: float, scale_lines: list[str] | None = None
) -> str:
    """report.md from the report.json content and the statistics tables.

    Args:
        report: the report.json document.
        cells: compute_stats output.
        dose: compute_dose_response output.
        alpha: level of the marks.
        scale_lines: the scale section (`caa_eval.report.scale.scale_markdown`).
    """
    s = report["settings"]
    n_sig = int(cells["significant"].sum())
    lines = [
        "# CAA steering report",
        "",
        f"Input: `{report['input']}` · {report['n_rows']} per-item scores · caa-eval {report['caa_eval_version']} · "
        f"{report['created']}",
        "",
        f"**{n_sig} of {report['correction']['n_tests']} steered cells differ significantly from multiplier 0** "
        f"(two-sided {s['primary_test']} test, Holm-corrected over all of them, α = {alpha}).",
        "",
        *_method_lines(report, alpha),
    ]
    lines += _pivot_lines(report, alpha)
    lines += _figure_lines(report["figures"])
    lines += scale_lines or []
    if not dose.empty:
        lines += ["## Dose-response", "", dose_markdown(dose), ""]
    if report["diagnostics"]:
        lines += ["## Diagnostics (means only, not tested)", "", diagnostics_markdown(report["diagnostics"]), ""]
    lines += ["## All cells", "", cells_markdown(cells, alpha), ""]
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    return "\n".join(lines)
