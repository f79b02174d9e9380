"""Markdown/JSON/PNG report for a sweep folder, a folder of lm-eval runs, or a long table.

The report answers "which steering effects are real": paper-shaped tables (behaviour × multiplier, and
MMLU per behaviour vector) carry bootstrap CIs and a Holm mark, and report.json lists for every number
the sample files and item count it came from.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from caa_eval import __version__
from caa_eval import stats as st
from caa_eval.errors import CAAEvalError
from caa_eval.files import write_atomic

MMLU_FAMILY = "caa_mmlu_2opt"
FAMILY_TITLES = {
    "caa_ab": "A/B behaviour questions — p(answer matching behaviour)",
    "caa_ab_balanced": "A/B behaviour questions, balanced letters — p(answer matching behaviour)",
    "caa_open": "Open-ended answers — judge score (0–10)",
    MMLU_FAMILY: "Two-option MMLU — p(correct)",
}
SERIES_COLOURS = {"caa_ab": "tab:blue", "caa_ab_balanced": "tab:purple", "caa_open": "tab:green", MMLU_FAMILY: "tab:red"}
MAX_DOSE_FIGURES = 12
PANEL_CONFIG = ["condition", "layer", "site", "positions"]


def _family(task: str, metric: str) -> str:
    family = st.task_family(task)
    return MMLU_FAMILY if metric == "p_correct" and not family else family


def _is_mmlu(cells: pd.DataFrame) -> pd.Series:
    return pd.Series([_family(t, m) == MMLU_FAMILY for t, m in zip(cells["task"], cells["metric"])], index=cells.index,
                     dtype=bool)


def _digits(metric: str) -> int:
    return 2 if metric == st.JUDGE_METRIC else 3


def _mark(row: pd.Series, alpha: float) -> str:
    if row["is_baseline"]:
        return ""
    if row["significant"]:
        return "*"
    return "†" if np.isfinite(row["p_bh"]) and row["p_bh"] < alpha else ""


def _baseline_row(cells: pd.DataFrame, cell: pd.Series) -> pd.Series | None:
    """The multiplier-0 cell a steered cell was compared with (stats records its layer/site/positions)."""
    match = cells[cells["is_baseline"]
                  & (cells["behaviour"] == cell["behaviour"]) & (cells["task"] == cell["task"])
                  & (cells["metric"] == cell["metric"]) & (cells["condition"] == cell["condition"])
                  & (cells["layer"] == cell["baseline_layer"]) & (cells["site"] == cell["baseline_site"])
                  & (cells["positions"] == cell["baseline_positions"])]
    return None if match.empty else match.iloc[0]


# ----------------------------------------------------------------------------------------------------
# tables


def pivot_tables(cells: pd.DataFrame, alpha: float) -> list[dict[str, Any]]:
    """Paper-shaped tables: one per (task family, metric); rows behaviour [× condition/layer/… that vary],
    columns multiplier (0 = the baseline each row was compared with)."""
    steered = cells[~cells["is_baseline"]].copy()
    steered["family"] = [_family(t, m) for t, m in zip(steered["task"], steered["metric"])]
    tables = []
    for (family, metric), group in steered.groupby(["family", "metric"], sort=False):
        index = ["behaviour"]
        several_tasks = (group.groupby("behaviour")["task"].nunique() > 1).any()
        if several_tasks or (not family and (group["task"] != group["behaviour"]).any()):
            index.append("task")
        index += [c for c in PANEL_CONFIG if group[c].nunique() > 1]
        multipliers = sorted(set(group["multiplier"]) | {0.0})
        rows = []
        for key, part in group.groupby(index, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            values: dict[str, Any] = {}
            for _, cell in part.iterrows():
                values[st.format_multiplier(cell["multiplier"])] = _entry(cell, alpha)
                base = _baseline_row(cells, cell)
                if base is not None:
                    values.setdefault("0", _entry(base, alpha))
            rows.append({"index": dict(zip(index, key)), "values": values})
        title = FAMILY_TITLES.get(family, f"{family or 'score'} — {metric}")
        if family and metric != st.PRIMARY_BY_FAMILY.get(family):
            title = f"{title.split(' — ')[0]} — {metric}"
        tables.append({"family": family, "metric": metric, "kind": "mmlu" if family == MMLU_FAMILY else "behaviour",
                       "title": title, "index": index, "multipliers": [st.format_multiplier(m) for m in multipliers],
                       "digits": _digits(metric), "rows": rows})
    tables.sort(key=lambda t: (t["kind"] == "mmlu", t["family"], t["metric"]))
    return tables


def _entry(cell: pd.Series, alpha: float) -> dict[str, Any]:
    def num(v: Any) -> float | None:
        return float(v) if v is not None and np.isfinite(v) else None
    return {"mean": num(cell["mean"]), "ci_low": num(cell["ci_low"]), "ci_high": num(cell["ci_high"]),
            "n": int(cell["n"]), "diff_vs_0": num(cell["diff_vs_0"]), "p_holm": num(cell["p_holm"]),
            "p_bh": num(cell["p_bh"]), "mark": _mark(cell, alpha)}


def _cell_text(entry: dict[str, Any] | None, digits: int) -> str:
    if entry is None or entry["mean"] is None:
        return "–"
    ci = "" if entry["ci_low"] is None else f" [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"
    return f"{entry['mean']:.{digits}f}{entry['mark']}{ci}"


def _md_table(head: list[str], rows: list[list[str]], n_left: int) -> str:
    """A markdown table; the first n_left columns are left-aligned labels, the rest right-aligned numbers."""
    rule = ["---"] * n_left + ["---:"] * (len(head) - n_left)
    return "\n".join("| " + " | ".join(r) + " |" for r in [head, rule, *rows])


def table_markdown(table: dict[str, Any]) -> str:
    rows = [[str(row["index"][c]) or "–" for c in table["index"]]
            + [_cell_text(row["values"].get(m), table["digits"]) for m in table["multipliers"]]
            for row in table["rows"]]
    return _md_table([*table["index"], *table["multipliers"]], rows, len(table["index"]))


def _fmt(v: Any, digits: int = 3, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _p(v: Any) -> str:
    return "–" if v is None or not np.isfinite(v) else ("<1e-4" if v < 1e-4 else f"{v:.4f}")


def _label_columns(df: pd.DataFrame) -> list[str]:
    """Key columns worth showing: not always empty, and task only when it is not just the behaviour."""
    return [c for c in st.GROUP_KEY
            if not (df[c] == "").all() and not (c == "task" and (df["task"] == df["behaviour"]).all())]


def cells_markdown(cells: pd.DataFrame, alpha: float) -> str:
    cols = _label_columns(cells)
    head = [*cols, "mult", "n", "mean [95% CI]", "diff vs 0 [95% CI]", "p Wilcoxon", "p perm.", "p Holm", "p BH",
            "dz", "wrong way", "MDE", "missing", "note"]
    rows = []
    for _, c in cells.iterrows():
        d = _digits(c["metric"])
        mean = f"{_fmt(c['mean'], d)} [{_fmt(c['ci_low'], d)}, {_fmt(c['ci_high'], d)}]"
        diff = "–" if c["is_baseline"] else (
            f"{_fmt(c['diff_vs_0'], d, True)}{_mark(c, alpha)} "
            f"[{_fmt(c['diff_ci_low'], d, True)}, {_fmt(c['diff_ci_high'], d, True)}]")
        rows.append([*(str(c[k]) or "–" for k in cols), st.format_multiplier(c["multiplier"]), str(c["n"]), mean, diff,
                     _p(c["p_wilcoxon"]), _p(c["p_permutation"]), _p(c["p_holm"]), _p(c["p_bh"]),
                     _fmt(c["cohen_dz"], 2), _fmt(c["frac_wrong_way"], 2), _fmt(c["mde"], d), str(c["n_missing"]),
                     c["note"] or ""])
    return _md_table(head, rows, len(cols))


def dose_markdown(dose: pd.DataFrame) -> str:
    cols = _label_columns(dose)
    head = [*cols, "multipliers", "items", "mean slope [95% CI]", "Page's L", "p trend", "p trend (Holm)", "direction"]
    rows = []
    for _, r in dose.iterrows():
        slope = f"{_fmt(r['slope'], 4, True)} [{_fmt(r['slope_ci_low'], 4, True)}, {_fmt(r['slope_ci_high'], 4, True)}]"
        rows.append([*(str(r[k]) or "–" for k in cols), r["multipliers"], str(r["n_items"]), slope,
                     _fmt(r["page_L"], 1), _p(r["p_trend"]), _p(r["p_trend_holm"]), r["trend_direction"] or "–"])
    return _md_table(head, rows, len(cols) + 1)


def diagnostics_markdown(diagnostics: list[dict[str, Any]]) -> str:
    head = ["behaviour", "task", "metric", "layer", "condition", "mult", "mean", "items"]
    rows = [[d["behaviour"], d["task"], d["metric"], d["layer"] or "–", d["condition"] or "–",
             st.format_multiplier(d["multiplier"]), _fmt(d["mean"]), str(d["count"])] for d in diagnostics]
    return _md_table(head, rows, 5)


# ----------------------------------------------------------------------------------------------------
# figures (Agg canvas, no pyplot state)


def _new_figure(n_panels: int, width: float = 4.2, height: float = 3.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(n_panels, 4)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return write_atomic(path, buf.getvalue())


def _series(cells: pd.DataFrame, steered: pd.DataFrame) -> pd.DataFrame:
    """Steered cells plus the baseline each was compared with, as points (multiplier, mean, CI)."""
    points = [steered[["multiplier", "mean", "ci_low", "ci_high"]]]
    for _, cell in steered.drop_duplicates(["behaviour", "task", "metric", *st.BASELINE_CONFIG]).iterrows():
        base = _baseline_row(cells, cell)
        if base is not None:
            points.append(base[["multiplier", "mean", "ci_low", "ci_high"]].to_frame().T)
    return pd.concat(points).drop_duplicates("multiplier").astype(float).sort_values("multiplier")


def _label(task: str, metric: str, behaviour: str) -> str:
    family = _family(task, metric)
    names = {"caa_ab": "A/B p(match)", "caa_ab_balanced": "A/B balanced p(match)", "caa_open": "open-ended judge (0–10)",
             MMLU_FAMILY: "MMLU p(correct)"}
    name = names.get(family, task if task != behaviour else metric)
    return name if not family or metric == st.PRIMARY_BY_FAMILY.get(family) else f"{name} {metric}"


def dose_figures(cells: pd.DataFrame, out_dir: Path, notes: list[str]) -> list[dict[str, Any]]:
    """One figure per steering config (condition/layer/site/positions): a panel per behaviour vector with its
    behaviour score(s) and MMLU p(correct) against the multiplier, CI bands — the trade-off in one view."""
    steered = cells[~cells["is_baseline"]]
    configs = steered.groupby(PANEL_CONFIG, sort=True)["multiplier"].nunique().sort_values(ascending=False, kind="stable")
    if len(configs) > MAX_DOSE_FIGURES:
        notes.append(f"dose-response figures drawn for the {MAX_DOSE_FIGURES} configurations with most multipliers "
                     f"of {len(configs)}; all numbers are in the tables")
    figures = []
    for number, config in enumerate(configs.index[:MAX_DOSE_FIGURES], 1):
        part = steered[(steered[PANEL_CONFIG] == pd.Series(config, index=PANEL_CONFIG)).all(axis=1)]
        behaviours = sorted(set(part["behaviour"]))
        fig, axes = _new_figure(len(behaviours))
        for ax, behaviour in zip(axes, behaviours):
            mine = part[part["behaviour"] == behaviour]
            twin = None
            for (task, metric), series_cells in mine.groupby(["task", "metric"], sort=True):
                pts = _series(cells, series_cells)
                judge = metric == st.JUDGE_METRIC
                if judge and twin is None:
                    twin = ax.twinx()
                    twin.set_ylim(0, 10)
                    twin.set_ylabel("judge score (0–10)")
                target = twin if judge else ax
                family = _family(task, metric)
                colour = SERIES_COLOURS.get(family) if metric == st.PRIMARY_BY_FAMILY.get(family) else None
                line, = target.plot(pts["multiplier"], pts["mean"], marker="o", color=colour,
                                    linestyle="--" if judge else "-", label=_label(task, metric, behaviour))
                target.fill_between(pts["multiplier"], pts["ci_low"], pts["ci_high"], alpha=0.2, color=line.get_color())
            ax.axvline(0, color="grey", linewidth=0.5)
            ax.set_title(behaviour)
            ax.set_xlabel("multiplier")
            ax.set_ylabel("mean score")
            handles = ax.get_legend_handles_labels()
            if twin is not None:
                extra = twin.get_legend_handles_labels()
                handles = (handles[0] + extra[0], handles[1] + extra[1])
            ax.legend(*handles, fontsize=7, loc="best")
        label = ", ".join(f"{k}={v}" for k, v in zip(PANEL_CONFIG, config) if v) or "default configuration"
        fig.suptitle(f"Dose-response with 95% bootstrap CI\n{label}", fontsize=10)
        name = f"dose_{number:02d}.png"
        _save(fig, out_dir / name)
        figures.append({"file": name, "kind": "dose_response", "config": dict(zip(PANEL_CONFIG, config)), "title": label})
    return figures


def layer_figures(cells: pd.DataFrame, out_dir: Path) -> list[dict[str, Any]]:
    """Score against layer, one line per multiplier, when a configuration was swept over ≥2 single layers."""
    steered = cells[~cells["is_baseline"] & cells["layer"].str.fullmatch(r"\d+")].copy()
    steered["family"] = [_family(t, m) or t for t, m in zip(steered["task"], steered["metric"])]
    figures = []
    keys = ["family", "metric", "condition", "site", "positions"]
    number = 0
    for key, part in steered.groupby(keys, sort=True):
        if part["layer"].nunique() < 2:
            continue
        panels = sorted(set(zip(part["behaviour"], part["task"])))
        fig, axes = _new_figure(len(panels))
        for ax, (behaviour, task) in zip(axes, panels):
            mine = part[(part["behaviour"] == behaviour) & (part["task"] == task)]
            for multiplier, series in mine.groupby("multiplier", sort=True):
                series = series.assign(x=series["layer"].astype(int)).sort_values("x")
                line, = ax.plot(series["x"], series["mean"], marker="o", markersize=3, label=st.format_multiplier(multiplier))
                ax.fill_between(series["x"], series["ci_low"].astype(float), series["ci_high"].astype(float), alpha=0.2,
                                color=line.get_color())
            base = [(int(c["layer"]), b["mean"]) for _, c in mine.drop_duplicates("layer").iterrows()
                    if (b := _baseline_row(cells, c)) is not None]
            if base:
                xs, ys = zip(*sorted(base))
                ax.plot(xs, ys, color="black", linestyle=":", label="0 (baseline)")
            own_task = task == behaviour or task.endswith(behaviour.replace("-", "_"))
            ax.set_title(behaviour if own_task else f"{behaviour}: {task}")
            ax.set_xlabel("layer")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_ylabel(_label(task, key[1], behaviour))
            ax.legend(title="multiplier", fontsize=7)
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, key) if v)
        fig.suptitle(f"Layer sweep with 95% bootstrap CI\n{label}", fontsize=10)
        number += 1
        name = f"layers_{number:02d}.png"
        _save(fig, out_dir / name)
        figures.append({"file": name, "kind": "layer_sweep", "config": dict(zip(keys, key)), "title": label})
    return figures


# ----------------------------------------------------------------------------------------------------
# report


def _load(source: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str, list[str]]:
    """(table to test, diagnostic rows, input label, loader warnings). For run folders only each task's primary
    metric is tested; the other per-item metrics (A+B mass, match) are summarised as plain means."""
    if isinstance(source, pd.DataFrame):
        return st.validate_long_table(source), pd.DataFrame(), "DataFrame", []
    path = Path(source)
    if path.is_dir():
        table = st.long_table_from_runs(path, metrics="all")
        primary = [st.primary_metric(t) in (None, m) for t, m in zip(table["task"], table["metric"])]
        primary = pd.Series(primary, index=table.index, dtype=bool)
        return table[primary].reset_index(drop=True), table[~primary], str(path), list(table.attrs.get("warnings", []))
    return st.load_long_table(path), pd.DataFrame(), str(path), []


def _default_out(source: str | Path | pd.DataFrame) -> Path:
    if isinstance(source, pd.DataFrame):
        raise CAAEvalError("build_report on a DataFrame needs out_dir")
    path = Path(source)
    return path / "report" if path.is_dir() else path.with_name(f"{path.stem}_report")


def _diagnostics(diag: pd.DataFrame) -> list[dict[str, Any]]:
    if diag.empty:
        return []
    grouped = diag.groupby(st.CELL_KEY, sort=True)["score"].agg(["mean", "count"]).reset_index()
    return st.to_records(grouped)


def build_report(source: str | Path | pd.DataFrame, out_dir: str | Path | None = None, *, alpha: float = 0.05,
                 seed: int = 0, n_resamples: int = 2000, n_permutations: int = 9999,
                 primary_test: str = "wilcoxon") -> Path:
    """Write report.md, report.json and PNG figures into out_dir (default RUN_DIR/report or TABLE_report/);
    returns the path of report.md."""
    table, diag, label, warnings_ = _load(source)
    out = Path(out_dir) if out_dir is not None else _default_out(source)
    cells = st.compute_stats(table, alpha=alpha, seed=seed, n_resamples=n_resamples, n_permutations=n_permutations,
                             primary_test=primary_test)
    dose = st.compute_dose_response(table, seed=seed, n_resamples=n_resamples)
    tables = pivot_tables(cells, alpha)
    notes = list(warnings_)
    out.mkdir(parents=True, exist_ok=True)
    old_figures = _previous_figures(out)
    figures = dose_figures(cells, out, notes) + layer_figures(cells, out)
    for stale in old_figures - {f["file"] for f in figures}:
        (out / stale).unlink(missing_ok=True)

    records = st.to_records(cells)
    for rec in records:
        rec["sources"] = [s for s in (rec["sources"] or "").split(";") if s]
        rec["baseline_sources"] = [s for s in (rec["baseline_sources"] or "").split(";") if s]
    settings = {"alpha": alpha, "seed": seed, "n_resamples": n_resamples, "n_permutations": n_permutations,
                "primary_test": primary_test, "confidence": 0.95}
    n_tests = int(cells.attrs["n_tests"])
    report = {
        "caa_eval_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": label, "settings": settings,
        "correction": {"family": "all cell-vs-multiplier-0 tests in this report", "n_tests": n_tests,
                       "methods": {"p_holm": "Holm (family-wise error)", "p_bh": "Benjamini-Hochberg (false discovery rate)"},
                       "applied_to": f"p_{primary_test}", "mark": {"*": f"p_holm < {alpha}", "†": f"p_bh < {alpha} only"}},
        "n_items_total": int(table["item_id"].nunique()), "n_rows": int(len(table)),
        "cells": records, "dose_response": st.to_records(dose), "tables": tables,
        "diagnostics": _diagnostics(diag), "figures": figures, "warnings": notes,
    }
    write_atomic(out / "report.json", json.dumps(report, indent=2, allow_nan=False, ensure_ascii=False))
    md = render_markdown(report, cells, dose, alpha)
    return write_atomic(out / "report.md", md)


def _previous_figures(out: Path) -> set[str]:
    try:
        old = json.loads((out / "report.json").read_text(encoding="utf-8"))
        return {f["file"] for f in old.get("figures", []) if "/" not in f["file"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def render_markdown(report: dict[str, Any], cells: pd.DataFrame, dose: pd.DataFrame, alpha: float) -> str:
    s = report["settings"]
    n_sig = int(cells["significant"].sum())
    lines = [
        "# CAA steering report", "",
        f"Input: `{report['input']}` · {report['n_rows']} per-item scores · caa-eval {report['caa_eval_version']} · "
        f"{report['created']}", "",
        f"**{n_sig} of {report['correction']['n_tests']} steered cells differ significantly from multiplier 0** "
        f"(two-sided {s['primary_test']} test, Holm-corrected over all of them, α = {alpha}).", "",
        "## How the numbers were computed", "",
        "- **Cells.** A cell is one (behaviour, task, metric, layer, site, positions, condition, multiplier). "
        "Its *mean* is the mean score over its items with a score; the interval is a 95% bootstrap CI "
        f"(BCa, {s['n_resamples']} resamples over items, seed {s['seed']}).",
        "- **Pairing.** Each steered cell is compared with the multiplier-0 baseline of the same behaviour, task, "
        "metric and condition *on the same items* (paired by item id): the baseline at the same layer/site/positions "
        "when it exists, otherwise the multiplier-0 run(s) of any layer (which must agree per item). The 0 column of "
        "the tables shows that baseline. *diff vs 0* is the mean per-item difference with a paired bootstrap CI.",
        "- **Tests.** Wilcoxon signed-rank (two-sided, zero differences dropped) and a sign-flip permutation test on "
        f"the mean difference ({s['n_permutations']} random sign flips, exact for small n). Both are rank/"
        "resampling tests, so they suit bounded probabilities and 0–10 judge scores alike.",
        f"- **Correction family.** All {report['correction']['n_tests']} cell-vs-0 tests in this report (every "
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
        "counts. Definitions: docs/statistics.md.", "",
    ]
    behaviour_tables = [t for t in report["tables"] if t["kind"] == "behaviour"]
    mmlu_tables = [t for t in report["tables"] if t["kind"] == "mmlu"]
    if behaviour_tables:
        lines += ["## Behaviour scores by multiplier (Table 4 shape)", "",
                  "Mean [95% CI]; `*` significant after Holm, `†` after BH only.", ""]
        for t in behaviour_tables:
            lines += [f"### {t['title']}", "", table_markdown(t), ""]
    if mmlu_tables:
        lines += ["## MMLU p(correct) by behaviour vector and multiplier (Table 5 shape)", "",
                  "Flat mean over the items of all subjects (equal to the subject macro-average when every subject has "
                  "the same number of items, as in CAA's 10 per subject).", ""]
        for t in mmlu_tables:
            lines += [table_markdown(t), ""]
    if report["figures"]:
        lines += ["## Figures", ""]
        for f in report["figures"]:
            kind = "Dose-response (behaviour and MMLU together)" if f["kind"] == "dose_response" else "Layer sweep"
            lines += [f"**{kind}: {f['title']}**", "", f"![{kind}]({f['file']})", ""]
    if not dose.empty:
        lines += ["## Dose-response", "", dose_markdown(dose), ""]
    if report["diagnostics"]:
        lines += ["## Diagnostics (means only, not tested)", "", diagnostics_markdown(report["diagnostics"]), ""]
    lines += ["## All cells", "", cells_markdown(cells, alpha), ""]
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    return "\n".join(lines)


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="sweep folder, lm_eval --output_path folder, or a .csv/.jsonl long table")
    parser.add_argument("--out", type=Path, help="output folder (default RUN_DIR/report or TABLE_report/)")
    st.add_common_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    if args.n_resamples < 100 or args.n_permutations < 100:
        raise CAAEvalError("--n-resamples and --n-permutations must be at least 100")
    path = build_report(args.input, args.out, alpha=args.alpha, seed=args.seed, n_resamples=args.n_resamples,
                        n_permutations=args.n_permutations, primary_test=args.test)
    report = json.loads((path.parent / "report.json").read_text(encoding="utf-8"))
    n_sig = sum(1 for c in report["cells"] if c["significant"])
    print(f"wrote {path} (+ report.json, {len(report['figures'])} figure(s)): {len(report['cells'])} cells, "
          f"{n_sig} of {report['correction']['n_tests']} steered cells significant after Holm")
    for w in report["warnings"]:
        print(f"warning: {w}")
    return 0
