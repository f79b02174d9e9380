"""The entanglement matrix (issue 20, item 2): `cross_tasks: true` runs every vector on every behaviour's A/B
task and the capability tasks in one shared-prefix pass; the report's matrix entries equal the paired
differences computed here from the samples files, and its Holm column equals statsmodels' Holm over the
whole matrix."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from caa_eval import sweep
from caa_eval.data.catalog import shipped_task_names
from caa_eval.sweep.grid import grid_batches
from tests.helpers.sweep_data import write_sycophancy_layout

REPO = Path(__file__).resolve().parents[2]
TINY_DATA = REPO / "examples" / "tiny_data"
KEYS = {"vector", "condition", "layer", "multiplier", "task", "metric", "n", "difference", "ci", "p", "p_holm"}
TQA = "caa_tqa_2opt" in shipped_task_names()  # issue 20's TruthfulQA task, once it is installed
TASKS = ("caa_ab_agree", "caa_ab_sycophancy", "caa_mmlu_2opt", *(["caa_tqa_2opt"] if TQA else []))
METRIC = {"caa_ab_agree": "p_match", "caa_ab_sycophancy": "p_match", "caa_mmlu_2opt": "p_correct"}
METRIC["caa_tqa_2opt"] = "p_correct"


def _config(tmp: Path, model: Path, mmlu: Path, caa: Path) -> dict:
    layout = write_sycophancy_layout(tmp / "caa")
    if TQA:
        (layout / "test" / "truthfulqa").mkdir()
        shutil.copy(caa / "test" / "truthfulqa" / "truthful_qa.json", layout / "test" / "truthfulqa")
    return {
        "model": str(model),
        "behaviours": [
            {
                "name": "agree",
                "pairs": str(TINY_DATA / "agree_pairs.jsonl"),
                "ab_test": str(TINY_DATA / "agree_test.json"),
            },
            "sycophancy",
        ],
        "tasks": ["caa_ab_{behaviour}"],
        "cross_tasks": True,
        "layers": [1],
        "multipliers": [-4, 4],
        "limit": 2,  # two items per MMLU subject / TQA category: their macro mean is the plain mean over items
        "batch_size": 16,
        "device": "cpu",
        "mmlu_dir": str(mmlu),
        "caa_data_dir": str(layout),
        "output": str(tmp / "run"),
    }


@pytest.fixture(scope="module")
def cross_run(tiny_model_dir, mmlu_dir, caa_data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("entangle")
    cfg = sweep.config_from_dict(_config(tmp, tiny_model_dir, mmlu_dir, caa_data_dir))
    sweep.run_sweep(cfg, progress=False, print_fn=lambda _: None)
    return cfg


def test_cross_tasks_run_every_vector_on_every_task_in_one_pass(cross_run):
    expected = list(TASKS)
    cells = sweep.plan_cells(cross_run)
    steered = [c for c in cells if not c.is_baseline]
    assert len(steered) == 4 and all(sorted(c.tasks) == sorted(expected) for c in steered)
    assert sorted(t for c in cells if c.is_baseline for t in c.tasks) == sorted(expected)
    assert len(grid_batches(cells, {c.name: c for c in cross_run.conditions})) == 1  # one shared-prefix pass


def _per_item(cell_dir: Path, task: str, metric: str) -> dict[str, float]:
    """item -> score from the samples files of one task (MMLU: one file per subject)."""
    out = {}
    for path in cell_dir.glob(f"samples_{task}_*.jsonl"):
        for record in map(json.loads, path.read_text().splitlines()):
            out[f"{path.name.split('_20')[0]}:{record['doc_id']}"] = float(record[metric])
    return out


def test_matrix_entries_are_the_paired_differences_with_holm_over_the_matrix(cross_run):
    run = cross_run.output
    report = json.loads((run / "report" / "report.json").read_text())
    entries = report["entanglement"]
    assert entries and all(set(e) == KEYS for e in entries)
    assert {(e["vector"], e["multiplier"], e["task"]) for e in entries} == {
        (v, m, t) for v in ("agree", "sycophancy") for m in (-4.0, 4.0) for t in TASKS
    }
    metric = METRIC
    cells = {(c["behaviour"], c["multiplier"], c["task"]): c for c in report["cells"]}
    sizes = defaultdict(set)
    for e in entries:
        base = _per_item(run / "cells" / f"baseline__base__{e['task']}", e["task"], metric[e["task"]])
        steered_dir = run / "cells" / f"{e['vector']}__base__L1__residual__after_instruction__m{e['multiplier']:+g}"
        mine = _per_item(steered_dir, e["task"], metric[e["task"]])
        assert set(mine) == set(base)
        d = np.array([mine[k] - base[k] for k in sorted(base)])
        assert e["metric"] == metric[e["task"]] and e["n"] == d.size
        assert e["difference"] == pytest.approx(float(d.mean()), abs=1e-9)
        cell = cells[(e["vector"], e["multiplier"], e["task"])]
        assert e["ci"] == [cell["diff_ci_low"], cell["diff_ci_high"]] and e["p"] == cell["p_wilcoxon"]
        sizes[e["task"]].add(d.size)
    assert sizes["caa_mmlu_2opt"] == {114} and sizes["caa_ab_sycophancy"] == {2}  # 2 per subject, every subject
    assert not TQA or sizes["caa_tqa_2opt"] == {64}  # 2 per category, all 32
    p = np.array([e["p"] for e in entries], dtype=float)
    assert np.isfinite(p).all()
    holm = multipletests(p, method="holm")[1]
    assert [e["p_holm"] for e in entries] == pytest.approx(list(holm), abs=1e-12)
    figure = next(f for f in report["figures"] if f["kind"] == "entanglement")
    assert (run / "report" / figure["file"]).stat().st_size > 1000
    assert "## Entanglement: every vector on every task" in (run / "report" / "report.md").read_text()


def test_shipped_cross_example_gives_every_vector_one_task_list():
    cfg = sweep.load_config(REPO / "examples" / "sweep_cross_smollm2.yaml")
    steered = [c for c in sweep.plan_cells(cfg) if not c.is_baseline]
    assert len(steered) == 4 and {tuple(c.tasks) for c in steered} == {tuple(cfg.cross_tasks)}
    assert cfg.cross_tasks[:2] == ["caa_ab_optimism", "caa_ab_agree"] and "caa_mmlu_2opt" in cfg.cross_tasks
