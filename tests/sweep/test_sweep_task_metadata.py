"""Sweep key `task_metadata`: it reaches the tasks as lm-eval metadata (tqa_seed=caa keeps CAA's own TruthfulQA
letters, the default draws balanced ones) and is part of every cell's spec, so a change is not silently mixed."""

from __future__ import annotations

import json

import pytest

from caa_eval import sweep
from caa_eval.errors import CAAEvalError
from caa_eval.sweep.tasks import task_manager

CATEGORY = "Misconceptions"


def _letters(cfg, tmp_path) -> list[str]:
    from lm_eval.tasks import get_task_dict

    task = get_task_dict(["caa_tqa_2opt_misconceptions"], task_manager(cfg, tmp_path))["caa_tqa_2opt_misconceptions"]
    return [doc["correct"] for doc in task.test_docs()]


def _cfg(tmp_path, **extra):
    raw = {"model": "m", "behaviours": ["sycophancy"], "layers": [13], "multipliers": [1], "tasks": ["caa_tqa_2opt"]}
    return sweep.config_from_dict(raw | extra, base=tmp_path, default_output=tmp_path / "out")


def test_task_metadata_reaches_the_tasks_and_the_cell_spec(caa_env, tmp_path):
    records = json.loads((caa_env / "test" / "truthfulqa" / "truthful_qa.json").read_text(encoding="utf-8"))
    caa = [r["correct"].strip("()") for r in records if r["category"] == CATEGORY]
    with_caa = _cfg(tmp_path, task_metadata={"tqa_seed": "caa"})
    assert _letters(with_caa, tmp_path) == caa
    assert _letters(_cfg(tmp_path), tmp_path) != caa  # the default draws balanced letters
    cell = sweep.plan_cells(with_caa)[0]
    assert sweep.cell_spec(with_caa, cell, None)["task_metadata"] == {"tqa_seed": "caa"}
    assert "task_metadata" not in sweep.cell_spec(_cfg(tmp_path), cell, None)


def test_task_metadata_must_be_a_mapping(tmp_path):
    with pytest.raises(CAAEvalError, match="key 'task_metadata'"):
        _cfg(tmp_path, task_metadata="caa")
