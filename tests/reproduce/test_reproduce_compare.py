"""`caa-eval reproduce compare`: the verdict rules (tolerance, CI) on hand-made cells, cells missing on either
side listed, the summary line and JSON shape of the issue, exit codes 0/1/2, a bad reference name in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from caa_eval import cli, reproduce
from caa_eval.reproduce import reference as reference_module
from caa_eval.reproduce.reference import ReferenceCell

AB7 = reproduce.get_experiment("ab-7b")
LAYERS = reproduce.get_experiment("layers-7b")


def _rows(behaviour: str, multiplier: float, scores, layer="13", condition="none", task=None, subject=None):
    task = task or f"caa_ab_{behaviour.replace('-', '_')}"
    return [
        {
            "item_id": str(i),
            "behaviour": behaviour,
            "task": task,
            "metric": "p_match",
            "layer": layer if multiplier != 0 else "",
            "site": "residual",
            "positions": "after_instruction",
            "condition": condition,
            "multiplier": float(multiplier),
            "score": float(s),
            **({"subject": subject[i]} if subject is not None else {}),
        }
        for i, s in enumerate(scores)
    ]


def _table(*groups) -> pd.DataFrame:
    return pd.DataFrame([r for g in groups for r in g])


@pytest.mark.parametrize(
    ("ref", "ours", "ci", "tol", "expected"),
    [
        (0.80, 0.84, (0.83, 0.85), 0.05, "reproduced"),  # inside the tolerance, outside the CI
        (0.80, 0.86, (0.83, 0.89), 0.05, "differs"),  # outside both
        (0.80, 0.90, (0.70, 0.95), 0.05, "reproduced"),  # outside the tolerance, CAA inside our CI
        (0.80, 0.90, (float("nan"), float("nan")), 0.05, "differs"),  # no CI: only the tolerance counts
        (0.80, 0.85, None, 0.05, "reproduced"),  # exactly on the tolerance
        (5.0, 5.4, (5.3, 5.5), 0.5, "reproduced"),  # 0-10 scores: tolerance 0.5
        (5.0, 5.6, (5.5, 5.7), 0.5, "differs"),
    ],
)
def test_verdict_rules_on_hand_made_cells(ref, ours, ci, tol, expected):
    assert reproduce.verdict(ref, ours, ci, tol) == expected


def test_default_tolerance_follows_the_metric_scale():
    assert reproduce.default_tolerance(AB7) == 0.05
    assert reproduce.default_tolerance(reproduce.get_experiment("open-7b")) == 0.5
    assert reproduce.default_tolerance(reproduce.get_experiment("table4-7b")) == 0.5


def test_compare_means_cis_verdicts_and_cells_missing_on_either_side():
    rng = np.random.default_rng(1)
    tight = np.clip(0.8 + rng.normal(0, 0.001, 50), 0, 1)  # mean ~0.80, tiny CI
    wide = rng.choice([0.0, 1.0], 50)  # mean ~0.5, CI about +-0.14
    table = _table(
        _rows("sycophancy", 1, tight),
        _rows("sycophancy", 0, wide),
        _rows("sycophancy", 2, tight),  # a multiplier the reference does not have
        _rows("refusal", 1, tight, condition=""),  # empty condition = none
    )
    ref = [
        ReferenceCell("sycophancy", 13, 1.0, "none", 0.80, 50),  # equal -> reproduced
        ReferenceCell("sycophancy", 13, 0.0, "none", float(wide.mean()) + 0.09, 50),  # off, inside the wide CI
        ReferenceCell("refusal", 13, 1.0, "none", 0.60, 50),  # off by 0.2 -> differs
        ReferenceCell("refusal", 13, -1.0, "none", 0.30, 50),  # the run does not have it
        ReferenceCell("sycophancy", 13, 1.0, "pos", 0.80, 50),  # nor this condition
    ]
    cmp = reproduce.compare_table(table, AB7, ref)
    got = {(c.behaviour, c.multiplier, c.condition): c for c in cmp.cells}
    assert set(got) == {("sycophancy", 1.0, "none"), ("sycophancy", 0.0, "none"), ("refusal", 1.0, "none")}
    assert got[("sycophancy", 1.0, "none")].ours == pytest.approx(tight.mean())
    assert got[("sycophancy", 1.0, "none")].verdict == "reproduced"
    wide_cell = got[("sycophancy", 0.0, "none")]
    assert wide_cell.ci[0] < wide_cell.reference < wide_cell.ci[1] and abs(wide_cell.difference) > 0.05
    assert wide_cell.verdict == "reproduced"
    assert got[("refusal", 1.0, "none")].verdict == "differs"
    assert got[("refusal", 1.0, "none")].difference == pytest.approx(tight.mean() - 0.60)
    assert {(r.behaviour, r.multiplier, r.condition) for r in cmp.only_reference} == {
        ("refusal", -1.0, "none"),
        ("sycophancy", 1.0, "pos"),
    }
    assert [(r["behaviour"], r["multiplier"]) for r in cmp.only_run] == [("sycophancy", 2.0)]
    line = reproduce.summary_line(cmp)
    assert line == (
        f"ab-7b: 2/3 cells reproduced; differs: refusal +1 ({tight.mean():.2f} vs 0.60); "
        "only in the reference: 2; only in the run: 1"
    )
    text = "\n".join(reproduce.text_lines(cmp))
    assert "refusal -1" in text and "sycophancy pos +1" in text and "sycophancy L13 +2 (caa_ab_sycophancy)" in text
    assert "system prompt wording" in text  # the known deviations are stated next to the verdict


def test_summary_line_has_the_issue_form():
    cells = [
        reproduce.CellVerdict("refusal", 13, 1.0, "none", "p_match", 0.89, 0.88, -0.01, (0.8, 0.9), "reproduced", 50),
        reproduce.CellVerdict("sycophancy", 13, 1.0, "none", "p_match", 0.81, 0.62, -0.19, (0.6, 0.64), "differs", 50),
    ]
    cmp = reproduce.Comparison(AB7, 0.05, cells, [])
    assert reproduce.summary_line(cmp) == "ab-7b: 1/2 cells reproduced; differs: sycophancy +1 (0.62 vs 0.81)"


def test_a_baseline_answers_every_layer_and_a_shared_baseline_every_behaviour():
    base = [0.5, 0.7, 0.9]
    table = _table(_rows("myopic-reward", 0, base), _rows("myopic-reward", 1, [0.9, 0.9, 0.9], layer="3"))
    ref = [ReferenceCell("myopic-reward", layer, 0.0, "none", 0.7, 50) for layer in (0, 3, 31)]
    ref.append(ReferenceCell("myopic-reward", 3, 1.0, "none", 0.9, 50))
    ref.append(ReferenceCell("myopic-reward", 4, 1.0, "none", 0.9, 50))  # no such layer in the run
    cmp = reproduce.compare_table(table, LAYERS, ref)
    assert sorted((c.layer, c.multiplier) for c in cmp.cells) == [(0, 0.0), (3, 0.0), (3, 1.0), (31, 0.0)]
    assert all(c.verdict == "reproduced" for c in cmp.cells)
    assert [(r.layer, r.multiplier) for r in cmp.only_reference] == [(4, 1.0)]
    assert "myopic-reward L4 +1" in reproduce.text_lines(cmp)[-1]


def test_mmlu_means_are_per_subject_macro_means():
    mmlu = reproduce.get_experiment("mmlu-13b")
    scores = [1.0, 1.0, 1.0, 0.0]
    subjects = ["a", "a", "a", "b"]  # flat mean 0.75, macro mean 0.5
    rows = _rows("refusal", -1, scores, layer="14", task="caa_mmlu_2opt", subject=subjects)
    for r in rows:
        r["metric"] = "p_correct"
    cmp = reproduce.compare_table(_table(rows), mmlu, [ReferenceCell("refusal", 14, -1.0, "none", 0.5, 570)])
    assert cmp.cells[0].ours == pytest.approx(np.mean([np.mean([1, 1, 1]), np.mean([0])]))


def _plant(folder: Path, values: dict[tuple[str, float, str], float]) -> Path:
    """A results_summary CSV with ab-7b's columns: only the planted cells."""
    folder.mkdir(parents=True, exist_ok=True)
    cols = ["behavior", "type", "model_size", "layer", "multiplier", "system_prompt", "override_vector"]
    cols += ["override_vector_model", "finetuned", "n", "p_mean_repo_formula", "mean_ab_mass", "file"]
    cols += ["p_category_macro_mean"]
    with (folder / reference_module.AB_FILE).open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        for (b, m, sp), v in values.items():
            w.writerow(
                {**dict.fromkeys(cols, ""), "behavior": b, "type": "ab", "model_size": "7b", "layer": 13}
                | {"multiplier": m, "system_prompt": sp, "n": 50, "p_mean_repo_formula": v}
            )
    return folder


def test_cli_exit_codes_json_and_md(tmp_path, monkeypatch, capsys):
    scores = [0.2, 0.4, 0.6, 0.8]
    table = _table(_rows("refusal", 1, scores), _rows("refusal", 0, scores))
    path = tmp_path / "long.csv"
    table.to_csv(path, index=False)
    monkeypatch.setattr(reference_module, "REFERENCE_DIR", _plant(tmp_path / "ok", {("refusal", 1.0, ""): 0.5}))
    out_json, out_md = tmp_path / "v.json", tmp_path / "v.md"
    assert cli.main(["reproduce", "compare", str(path), "--reference", "ab-7b", "--json", str(out_json)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "ab-7b: 1/1 cells reproduced; only in the run: 1"
    data = json.loads(out_json.read_text())
    assert set(data) >= {"experiment", "cells", "reproduced", "compared"}
    assert (data["experiment"], data["reproduced"], data["compared"]) == ("ab-7b", 1, 1)
    keys = {"behaviour", "layer", "multiplier", "condition", "metric", "reference", "ours", "difference", "ci"}
    assert set(data["cells"][0]) >= keys | {"verdict"}
    assert data["cells"][0]["ours"] == pytest.approx(0.5) and data["cells"][0]["verdict"] == "reproduced"

    monkeypatch.setattr(reference_module, "REFERENCE_DIR", _plant(tmp_path / "off", {("refusal", 1.0, ""): 0.95}))
    code = cli.main(
        ["reproduce", "compare", str(path), "--reference", "ab-7b", "--md", str(out_md), "--tolerance", "0.1"]
    )
    assert code == 1  # 0.95 is outside 0.5 +- 0.1 and outside the CI of 4 items within [0.2, 0.8]
    assert "differs: refusal +1 (0.50 vs 0.95)" in capsys.readouterr().out
    assert "| refusal +1 | 0.95 | 0.50 | -0.450 |" in out_md.read_text()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--reference", "ab-8b"], "unknown experiment 'ab-8b'; did you mean 'ab-7b'?"),
        (["--reference", "ab-7b", "--tolerance", "-1"], "--tolerance"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, needle):
    path = tmp_path / "long.csv"
    _table(_rows("refusal", 1, [0.5, 0.6])).to_csv(path, index=False)
    assert cli.main(["reproduce", "compare", str(path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("caa-eval reproduce: error: ") and needle in err[0]


def test_a_run_with_none_of_the_cells_is_bad_input(tmp_path, capsys):
    path = tmp_path / "long.csv"
    _table(_rows("refusal", 1, [0.5, 0.6])).to_csv(path, index=False)
    assert cli.main(["reproduce", "compare", str(path), "--reference", "open-7b"]) == 2
    assert "has none of the 21 cells of open-7b" in capsys.readouterr().err
