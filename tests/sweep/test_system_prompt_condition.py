"""Sweep condition key `system_prompt: pos|neg|TEXT`: pos/neg pick each behaviour's shipped prompt (per-behaviour
baselines for shared tasks), any other text is every cell's system prompt; bad entries fail at config time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caa_eval import sweep
from caa_eval.errors import CAAEvalError
from caa_eval.sweep.finetunes import cell_condition

SHIPPED = Path(__file__).resolve().parents[2] / "caa_eval" / "data" / "system_prompts.json"


def _cfg(tmp_path: Path, conditions: list, behaviours: list | None = None) -> sweep.SweepConfig:
    return sweep.config_from_dict(
        {
            "model": "m",
            "behaviours": behaviours or ["sycophancy", "refusal"],
            "layers": [13],
            "multipliers": [-1, 1],
            "conditions": conditions,
        },
        source="s.yaml",
        base=tmp_path,
    )


def test_pos_neg_resolve_to_each_behaviours_shipped_prompt(tmp_path):
    shipped = json.loads(SHIPPED.read_text(encoding="utf-8"))["prompts"]
    cfg = _cfg(tmp_path, ["base", {"name": "pos", "system_prompt": "pos"}, {"name": "neg", "system_prompt": "neg"}])
    conds = {c.name: c for c in cfg.conditions}
    for b in ("sycophancy", "refusal"):
        for d in ("pos", "neg"):
            assert cell_condition(cfg, conds[d], b).system_instruction == shipped[b][d]
        assert cell_condition(cfg, conds["base"], b).system_instruction is None
    assert shipped["sycophancy"]["pos"] != shipped["refusal"]["pos"]
    cells = sweep.plan_cells(cfg)
    ids = {c.id for c in cells}
    # a shared task (MMLU) gets one baseline per behaviour under pos/neg, one for all under base
    assert "baseline__base__caa_mmlu_2opt" in ids
    assert {"baseline__pos__sycophancy__caa_mmlu_2opt", "baseline__pos__refusal__caa_mmlu_2opt"} <= ids
    assert "baseline__pos__caa_mmlu_2opt" not in ids
    # the prompt text is part of what a cell's numbers depend on
    cell = next(c for c in cells if c.id == "baseline__pos__refusal__caa_mmlu_2opt")
    assert sweep.cell_spec(cfg, cell, None)["system_prompt_text"] == shipped["refusal"]["pos"]


def test_literal_text_is_every_cells_system_prompt(tmp_path):
    cfg = _cfg(tmp_path, [{"name": "brief", "system_prompt": "Answer in one word."}])
    (cond,) = cfg.conditions
    assert cond.system_instruction == "Answer in one word." and not cond.per_behaviour
    assert cell_condition(cfg, cond, "refusal").system_instruction == "Answer in one word."
    assert "baseline__brief__caa_mmlu_2opt" in {c.id for c in sweep.plan_cells(cfg)}


@pytest.mark.parametrize(
    "conditions, behaviours, needle",
    [
        ([{"name": "p", "system_prompt": "pos", "system_instruction": "x"}], None, "both system_prompt and"),
        ([{"name": "p", "system_prompt": 3}], None, "system_prompt 3 is not text"),
        (
            [{"name": "p", "system_prompt": "neg"}],
            ["sycophancy", {"name": "mine", "pairs": "pairs.json"}],
            "no shipped system prompt for behaviour 'mine'",
        ),
    ],
)
def test_bad_system_prompt_is_one_line(tmp_path, conditions, behaviours, needle):
    (tmp_path / "pairs.json").write_text("[]", encoding="utf-8")
    with pytest.raises(CAAEvalError) as exc:
        _cfg(tmp_path, conditions, behaviours)
    assert needle in str(exc.value) and "\n" not in str(exc.value) and "key 'conditions'" in str(exc.value)
