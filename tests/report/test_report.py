"""Report and run-folder loaders on synthetic lm-eval outputs built in tmp (no model, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from caa_eval import cli
from caa_eval import stats as st
from caa_eval.errors import CAAEvalError
from caa_eval.report import build_report
from caa_eval.vocab import format_multiplier

DATE = "2025-01-02T03-04-05.678901"
N = 20  # items per task
SUBJECTS = ("anatomy", "virology")  # 10 MMLU items each
BEHAVIOURS = ("sycophancy", "myopic-reward")
# planted per-cell shifts: mean p_match = 0.5 + AB_SHIFT[b] * multiplier, exactly
AB_SHIFT = {"sycophancy": 0.2, "myopic-reward": 0.1}
MMLU_SHIFT = {-1.0: -0.05, 0.0: 0.0, 1.0: -0.02}


def _ab_scores(behaviour: str, multiplier: float, layer: int = 13) -> np.ndarray:
    base = 0.5 + 0.2 * np.sin(np.arange(N))  # mean exactly 0.5 after centring below
    base = base - base.mean() + 0.5
    wiggle = 0.01 * np.cos(np.arange(N) * 3)  # per-item noise so that tests have variance
    wiggle -= wiggle.mean()
    shift = AB_SHIFT[behaviour] * multiplier * (1.0 if layer == 13 else 0.5)
    return base + shift + (wiggle if multiplier else 0.0)


def _mmlu_scores(multiplier: float) -> np.ndarray:
    base = 0.65 + 0.1 * np.cos(np.arange(20))
    base = base - base.mean() + 0.65
    wiggle = 0.005 * np.sin(np.arange(20) * 2)
    wiggle -= wiggle.mean()
    return base + MMLU_SHIFT[multiplier] + (wiggle if multiplier else 0.0)


def _judge_scores(multiplier: float) -> list[float | None]:
    base = np.array([2, 3, 4, 5] * 5, dtype=float)
    scores: list[float | None] = list(base + 2 * multiplier + (np.arange(N) % 3 - 1) * (multiplier != 0))
    if multiplier == 1:
        scores[0] = None  # judge failed on item 0 at +1
    if multiplier == 0:
        scores[5] = None
    return scores


def _write_run(
    folder: Path,
    model_args: dict | str,
    tasks: dict[str, list[dict]],
    judged: dict[str, list] | None = None,
    date: str = DATE,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    results = {
        "results": {t: {"alias": t} for t in tasks},
        "config": {"model": "steered-hf", "model_args": model_args},
        "date": 0.0,
    }
    (folder / f"results_{date}.json").write_text(json.dumps(results))
    for task, lines in tasks.items():
        with open(folder / f"samples_{task}_{date}.jsonl", "w") as fh:
            for line in lines:
                fh.write(json.dumps(line) + "\n")
    for task, scores in (judged or {}).items():
        with open(folder / f"judged_{task}_{date}.jsonl", "w") as fh:
            for i, s in enumerate(scores):
                fh.write(
                    json.dumps(
                        {
                            "doc_id": i,
                            "behaviour": task.removeprefix("caa_open_"),
                            "score": s,
                            "status": "ok" if s is not None else "unparseable",
                        }
                    )
                    + "\n"
                )


def _sample(doc_id: int, **metrics: float) -> dict:
    return {
        "doc_id": doc_id,
        "doc": {"q": f"question {doc_id}"},
        "target": "",
        "arguments": {},
        "resps": [],
        "filtered_resps": [],
        "filter": "none",
        "metrics": list(metrics),
        "doc_hash": "h",
        "prompt_hash": "h",
        "target_hash": "h",
        **metrics,
    }


def _ab_task(behaviour: str, multiplier: float, layer: int = 13) -> list[dict]:
    p = _ab_scores(behaviour, multiplier, layer)
    return [_sample(i, p_match=float(v), ab_mass=0.9, match=float(v > 0.5)) for i, v in enumerate(p)]


def _mmlu_tasks(multiplier: float) -> dict[str, list[dict]]:
    p = _mmlu_scores(multiplier)
    out = {}
    for s, subject in enumerate(SUBJECTS):
        out[f"caa_mmlu_2opt_{subject}"] = [_sample(i, p_correct=float(p[s * 10 + i]), ab_mass=0.95) for i in range(10)]
    return out


def make_sweep(root: Path, layers: tuple[int, ...] = (13,)) -> Path:
    """A sweep folder: per behaviour × layer × multiplier ±1 a cell with A/B (+ MMLU at layer 13, + open-ended
    for sycophancy); one shared multiplier-0 cell per layer; one unfinished cell."""
    (root / "cells").mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"layers": list(layers)}))

    def cell(cell_id: str, behaviour: str | None, layer: int, multiplier: float, tasks: dict, judged=None, done=True):
        d = root / "cells" / cell_id
        meta = {
            "behaviour": behaviour,
            "condition": "",
            "layer": layer,
            "site": "residual",
            "positions": "after_instruction",
            "multiplier": multiplier,
            "tasks": sorted(tasks) + sorted(judged or {}),
            "vector": f"vectors/{behaviour}.safetensors" if behaviour else None,
        }
        d.mkdir()
        (d / "cell.json").write_text(json.dumps(meta))
        _write_run(d / "model", {"pretrained": "tiny", "layers": layer, "multiplier": multiplier}, tasks, judged)
        if done:
            (d / "DONE").write_text("")

    for layer in layers:
        base_tasks = {f"caa_ab_{b.replace('-', '_')}": _ab_task(b, 0.0, layer) for b in BEHAVIOURS}
        judged = None
        if layer == 13:
            base_tasks |= _mmlu_tasks(0.0)
            base_tasks["caa_open_sycophancy"] = [_sample(i, bypass=999) for i in range(N)]
            judged = {"caa_open_sycophancy": _judge_scores(0.0)}
        cell(f"base_L{layer}", None, layer, 0.0, base_tasks, judged)
        for b in BEHAVIOURS:
            for m in (-1.0, 1.0):
                tasks = {f"caa_ab_{b.replace('-', '_')}": _ab_task(b, m, layer)}
                judged = None
                if layer == 13:
                    tasks |= _mmlu_tasks(m)
                    if b == "sycophancy":
                        tasks["caa_open_sycophancy"] = [_sample(i, bypass=999) for i in range(N)]
                        judged = {"caa_open_sycophancy": _judge_scores(m)}
                cell(f"{b}_L{layer}_m{m:+g}", b, layer, m, tasks, judged)
    cell("sycophancy_L13_m+2", "sycophancy", 13, 2.0, {"caa_ab_sycophancy": _ab_task("sycophancy", 1.0)}, done=False)
    return root


FAST = {"n_resamples": 300, "n_permutations": 999}


def test_sweep_long_table(tmp_path):
    table = st.long_table_from_runs(make_sweep(tmp_path / "sweep"))
    assert set(table["behaviour"]) == set(BEHAVIOURS)
    assert set(table["task"]) == {"caa_ab_sycophancy", "caa_ab_myopic_reward", "caa_mmlu_2opt", "caa_open_sycophancy"}
    assert set(table["metric"]) == {"p_match", "p_correct", "judge_score"}  # primary metrics only
    assert 2.0 not in set(table["multiplier"])  # the unfinished cell is ignored ...
    assert any("no DONE marker" in w for w in table.attrs["warnings"])  # ... with a warning
    mmlu = table[(table.task == "caa_mmlu_2opt") & (table.behaviour == "sycophancy") & (table.multiplier == 0)]
    assert len(mmlu) == 20 and mmlu["item_id"].str.startswith(("anatomy:", "virology:")).all()  # shared baseline copied
    judge = table[table.metric == "judge_score"]
    assert judge["score"].isna().sum() == 2
    assert table["source"].str.startswith("cells/").all()


def test_report_on_sweep(tmp_path):
    run = make_sweep(tmp_path / "sweep")
    md_path = build_report(run, **FAST)
    out = run / "report"
    assert md_path == out / "report.md"
    report = json.loads((out / "report.json").read_text())
    md = md_path.read_text()

    # Table-4-shaped pivot: planted means 0.5 ± shift, marks after Holm
    ab = next(t for t in report["tables"] if t["family"] == "caa_ab")
    rows = {r["index"]["behaviour"]: r["values"] for r in ab["rows"]}
    assert ab["multipliers"] == ["-1", "0", "+1"]
    for b, shift in AB_SHIFT.items():
        assert rows[b]["-1"]["mean"] == pytest.approx(0.5 - shift)
        assert rows[b]["0"]["mean"] == pytest.approx(0.5)
        assert rows[b]["+1"]["mean"] == pytest.approx(0.5 + shift)
        assert rows[b]["+1"]["mark"] == "*" and rows[b]["0"]["mark"] == ""
    assert "| sycophancy | 0.300* [" in md and "| 0.500 [" in md

    # Table-5-shaped MMLU table: rows are behaviour vectors, shared baseline 0.65
    mmlu = next(t for t in report["tables"] if t["kind"] == "mmlu")
    for r in mmlu["rows"]:
        assert r["values"]["0"]["mean"] == pytest.approx(0.65)
        assert r["values"]["-1"]["mean"] == pytest.approx(0.60)
        assert r["values"]["+1"]["mean"] == pytest.approx(0.63)
    assert "MMLU p(correct) by behaviour vector" in md

    # open-ended: judge scores with missing values excluded pairwise and counted
    judge = [c for c in report["cells"] if c["metric"] == "judge_score" and not c["is_baseline"]]
    plus = next(c for c in judge if c["multiplier"] == 1)
    assert plus["n_missing"] == 2 and plus["n"] == N - 2

    # traceability: every cell names its sample files and item count
    for c in report["cells"]:
        assert c["sources"] and c["n"] > 0
        if not c["is_baseline"]:
            assert c["baseline_sources"]
    syc = next(c for c in report["cells"] if c["task"] == "caa_ab_sycophancy" and c["multiplier"] == 1)
    assert syc["sources"] == [f"cells/sycophancy_L13_m+1/model/samples_caa_ab_sycophancy_{DATE}.jsonl"]
    assert syc["baseline_sources"] == [f"cells/base_L13/model/samples_caa_ab_sycophancy_{DATE}.jsonl"]
    assert report["correction"]["n_tests"] == sum(not c["is_baseline"] for c in report["cells"])
    assert any("no DONE marker" in w for w in report["warnings"])
    assert report["diagnostics"] and {d["metric"] for d in report["diagnostics"]} >= {"ab_mass"}

    # figures: one dose-response figure with behaviour + MMLU, no layer sweep (one layer); steerability cards aside
    assert [f["kind"] for f in report["figures"] if f["kind"] != "steerability"] == ["dose_response"]
    png = out / report["figures"][0]["file"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Correction family" in md and "paired" in md.lower()
    assert not list(out.glob(".*tmp"))


def test_report_layer_sweep_figures(tmp_path):
    run = make_sweep(tmp_path / "sweep", layers=(12, 13, 14))
    build_report(run, **FAST)
    report = json.loads((run / "report" / "report.json").read_text())
    kinds = [f["kind"] for f in report["figures"]]
    assert "layer_sweep" in kinds
    for f in report["figures"]:
        assert (run / "report" / f["file"]).stat().st_size > 1000
    # layer-specific baselines: each steered cell is paired with the multiplier-0 cell of its own layer
    for c in report["cells"]:
        if not c["is_baseline"] and c["task"].startswith("caa_ab_"):
            assert c["baseline_layer"] == c["layer"]
    ab = next(t for t in report["tables"] if t["family"] == "caa_ab")
    assert "layer" in ab["index"]
    row = next(r for r in ab["rows"] if r["index"] == {"behaviour": "sycophancy", "layer": "12"})
    assert row["values"]["+1"]["mean"] == pytest.approx(0.6)


def test_plain_lm_eval_folder(tmp_path):
    """One subfolder per lm_eval run; model_args as dict or as the Python API's "k=v,k=v" string."""
    root = tmp_path / "runs"
    _write_run(root / "base" / "tiny", {"pretrained": "tiny"}, {"caa_ab_sycophancy": _ab_task("sycophancy", 0.0)})
    _write_run(
        root / "plus" / "tiny",
        "pretrained=tiny,vector=/nowhere/sycophancy.safetensors,layers=[13],multiplier=1,site=residual",
        {"caa_ab_sycophancy": _ab_task("sycophancy", 1.0)} | _mmlu_tasks(1.0),
    )
    _write_run(root / "plus" / "tiny", {"pretrained": "tiny"}, _mmlu_tasks(0.0), date="2025-01-02T09-00-00.000001")
    _write_run(
        root / "default",
        {"pretrained": "tiny", "vector": "/nowhere/sycophancy.safetensors", "layers": 14},
        {"caa_ab_sycophancy": _ab_task("sycophancy", 1.0, layer=14)},
    )
    table = st.long_table_from_runs(root)
    default = table[table.layer == "14"]  # steered-hf defaults: multiplier 1, positions after_instruction
    assert set(default["multiplier"]) == {1.0} and set(default["positions"]) == {"after_instruction"}
    table = table[table.layer != "14"]
    plus = table[table.multiplier == 1]
    assert set(plus["layer"]) == {"13"} and set(plus["site"]) == {"residual"}
    assert set(plus["behaviour"]) == {"sycophancy"}  # MMLU behaviour from the vector file name
    base = table[table.multiplier == 0]
    assert set(base["layer"]) == {""}
    cells = st.compute_stats(table, **FAST)
    row = cells[(cells.task == "caa_ab_sycophancy") & (cells.multiplier == 1)].iloc[0]
    assert row["diff_vs_0"] == pytest.approx(0.2) and row["baseline_layer"] == ""
    mmlu = cells[(cells.task == "caa_mmlu_2opt") & (cells.multiplier == 1)].iloc[0]
    assert mmlu["mean"] == pytest.approx(0.63) and mmlu["n"] == 20


def test_runs_loader_errors(tmp_path):
    with pytest.raises(CAAEvalError, match="no per-item scores"):
        st.long_table_from_runs(tmp_path)
    bad = tmp_path / "bad"
    _write_run(
        bad,
        {"pretrained": "tiny", "vector": "v.safetensors", "multiplier": "strong"},
        {"caa_ab_x": _ab_task("sycophancy", 1.0)},
    )
    with pytest.raises(CAAEvalError, match="multiplier='strong' is not a number"):
        st.long_table_from_runs(bad)
    dup = tmp_path / "dup"
    _write_run(dup / "a", {"pretrained": "tiny"}, {"caa_ab_x": _ab_task("sycophancy", 0.0)})
    _write_run(dup / "b", {"pretrained": "tiny"}, {"caa_ab_x": _ab_task("sycophancy", 0.0)})
    with pytest.raises(CAAEvalError, match=r"appears 2 times .*a/samples_caa_ab_x.*b/samples_caa_ab_x"):
        st.long_table_from_runs(dup)


def test_report_from_csv_via_cli(tmp_path, capsys):
    rows = [
        {"item_id": i, "behaviour": b, "multiplier": m, "score": float(v)}
        for b in BEHAVIOURS
        for m in (-1.0, 0.0, 1.0)
        for i, v in enumerate(_ab_scores(b, m))
    ]
    csv = tmp_path / "table.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    assert cli.main(["report", str(csv), "--n-resamples", "300", "--n-permutations", "999"]) == 0
    out = tmp_path / "table_report"
    assert (out / "report.md").exists() and (out / "report.json").exists()
    assert "significant after Holm" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    table = report["tables"][0]
    rows = {r["index"]["behaviour"]: r["values"] for r in table["rows"]}
    assert rows["myopic-reward"]["+1"]["mean"] == pytest.approx(0.6)
    assert all(c["sources"] == ["table.csv"] for c in report["cells"])
    # rerun into the same folder: files are replaced, not duplicated
    assert cli.main(["report", str(csv), "--out", str(out), "--n-resamples", "300", "--n-permutations", "999"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.md", "report.json", "report.html"] + [f["file"] for f in report["figures"]]
    )


def test_report_cli_error_is_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("caa-eval report: error:") and "\n" not in err


def test_vector_header_names_the_behaviour(tmp_path):
    """An MMLU run's behaviour comes from the vector file's caa-eval header, not its file name."""
    from safetensors.numpy import save_file

    vec = tmp_path / "v1.safetensors"
    save_file(
        {"layer_13": np.zeros(4, np.float32)},
        str(vec),
        metadata={"caa_eval": json.dumps({"behaviour": "corrigible-neutral-HHH", "site": "mlp"})},
    )
    root = tmp_path / "runs"
    _write_run(
        root / "a", {"pretrained": "tiny", "vector": str(vec), "layers": 13, "multiplier": -1}, _mmlu_tasks(-1.0)
    )
    table = st.long_table_from_runs(root)
    assert set(table["behaviour"]) == {"corrigible-neutral-HHH"} and set(table["site"]) == {"mlp"}


# CAA's subset and the full MMLU in one report, with uneven subject sizes: per-subject means are planted so
# that the macro mean (mean per subject, then over subjects) differs from a size-weighted item mean.
MMLU_VARIANTS = {  # family -> {subject: (items, baseline mean)}
    "caa_mmlu_2opt": {"anatomy": (3, 0.80), "virology": (12, 0.40)},
    "caa_mmlu_2opt_full": {"anatomy": (20, 0.90), "virology": (5, 0.50)},
}
VARIANT_SHIFT = {"caa_mmlu_2opt": {-1.0: -0.10, 1.0: -0.02}, "caa_mmlu_2opt_full": {-1.0: -0.06, 1.0: 0.04}}


def _variant_tasks(multiplier: float) -> dict[str, list[dict]]:
    out = {}
    for family, subjects in MMLU_VARIANTS.items():
        for subject, (n, mean) in subjects.items():
            spread = np.linspace(-0.05, 0.05, n)  # mean zero within the subject
            noise = 0.004 * np.cos(np.arange(n) * 1.7) * (multiplier != 0)
            values = mean + spread + VARIANT_SHIFT[family].get(multiplier, 0.0) + (noise - noise.mean())
            out[f"{family}_{subject}"] = [
                _sample(i, p_correct=float(v), ab_mass=0.9 + 0.01 * (subject == "anatomy"))
                for i, v in enumerate(values)
            ]
    return out


def test_mmlu_variants_stay_apart_with_subject_macro_means(tmp_path):
    root = tmp_path / "runs"
    _write_run(root / "base", {"pretrained": "tiny"}, _variant_tasks(0.0))
    for layer in (12, 13):
        for m in (-1.0, 1.0):
            _write_run(
                root / f"L{layer}_m{m:+g}",
                {"pretrained": "tiny", "vector": "/nowhere/sycophancy.safetensors", "layers": layer, "multiplier": m},
                _variant_tasks(m),
            )
    table = st.long_table_from_runs(root)
    assert set(table["task"]) == set(MMLU_VARIANTS)  # the full variant is not pooled into the subset's cell
    assert set(table.loc[table.task == "caa_mmlu_2opt_full", "subject"]) == {"anatomy", "virology"}

    md = build_report(root, tmp_path / "report", **FAST).read_text()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    mmlu = {t["family"]: t for t in report["tables"] if t["kind"] == "mmlu"}
    assert set(mmlu) == set(MMLU_VARIANTS)
    for family, subjects in MMLU_VARIANTS.items():
        sizes = np.array([n for n, _ in subjects.values()])
        means = np.array([mean for _, mean in subjects.values()])
        for m in (-1.0, 0.0, 1.0):
            macro = means.mean() + VARIANT_SHIFT[family].get(m, 0.0)
            flat = np.average(means, weights=sizes) + VARIANT_SHIFT[family].get(m, 0.0)
            assert abs(macro - flat) > 0.05  # a size-weighted mean would fail the checks below
            for row in mmlu[family]["rows"]:
                entry = row["values"][format_multiplier(m)]
                assert entry["mean"] == pytest.approx(macro) and entry["n"] == sizes.sum()
        cells = [c for c in report["cells"] if c["task"] == family]
        assert cells and all(c["n_subjects"] == 2 and c["n_items"] == sizes.sum() for c in cells)
        assert all(family in s for c in cells for s in c["sources"])
        assert f"### {mmlu[family]['title']}" in md
    assert mmlu["caa_mmlu_2opt"]["title"] != mmlu["caa_mmlu_2opt_full"]["title"]
    # diagnostics (ab_mass) are macro means too: anatomy 0.91, virology 0.90 in both variants
    assert {round(d["mean"], 6) for d in report["diagnostics"]} == {0.905}
    # figures: the layer sweep draws each variant in its own figure; the dose figure has a line per variant
    layer_families = sorted(f["config"]["family"] for f in report["figures"] if f["kind"] == "layer_sweep")
    assert layer_families == sorted(MMLU_VARIANTS)
    from caa_eval.report.figures import _label

    assert _label("caa_mmlu_2opt", "p_correct", "sycophancy") != _label("caa_mmlu_2opt_full", "p_correct", "sycophancy")
