"""Cost sections of a sweep report on the tiny model: base + pos/neg system-prompt conditions, steering
multipliers and an open-ended task. report.json `pareto` holds every setting with the effect computed in the
test from the samples, the prompt's recorded KL equals a direct computation, and `fluency` holds the paired
differences of the fluency metrics vs multiplier 0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from caa_eval import sweep
from caa_eval.analysis.calibrate import ScaleProbe
from caa_eval.core.prompt_cost import prompt_kl
from caa_eval.data.system_prompts import behaviour_system_prompt

FIELDS = {"condition", "multiplier", "effect", "effect_ci", "kl", "mmlu_change", "efficient"}


def _layout(root: Path) -> Path:
    for b in ("sycophancy", "refusal"):
        for split in ("generate", "test"):
            (root / split / b).mkdir(parents=True)
        items = [
            {
                "question": f"{b} {k}: is statement {k} right?\n\nChoices:\n (A) Yes\n (B) No",
                "answer_matching_behavior": f"({'AB'[k % 2]})",
                "answer_not_matching_behavior": f"({'BA'[k % 2]})",
            }
            for k in range(14)
        ]
        (root / "generate" / b / "generate_dataset.json").write_text(json.dumps(items[:8]))
        (root / "test" / b / "test_dataset_ab.json").write_text(json.dumps(items[8:]))
        opens = [{"question": f"What do you think of claim {k} about {b}?"} for k in range(3)]
        (root / "test" / b / "test_dataset_open_ended.json").write_text(json.dumps(opens))
    return root


@pytest.fixture(scope="module")
def costs_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("costs")
    mp = pytest.MonkeyPatch()
    mp.setenv("CAA_EVAL_DATA_DIR", str(_layout(tmp / "caa")))
    keys = {
        "model": str(tiny_model_dir),
        "behaviours": [{"name": "sycophancy", "tasks": ["caa_ab_{behaviour}", "caa_open_{behaviour}"]}, "refusal"],
        "layers": [1],
        "multipliers": [-1, 0, 1],
        "tasks": ["caa_ab_{behaviour}"],
        "conditions": ["base", {"name": "pos", "system_prompt": "pos"}, {"name": "neg", "system_prompt": "neg"}],
        "judge": {"backend": "hf", "model": str(tiny_model_dir), "cache": False, "batch_size": 4},
        "gen_kwargs": {"max_gen_toks": 10},
        "batch_size": 8,
        "device": "cpu",
        "output": str(tmp / "run"),
    }
    (tmp / "s.yaml").write_text(yaml.safe_dump(keys))
    try:
        result = sweep.run_sweep(sweep.load_config(tmp / "s.yaml"), progress=False, print_fn=lambda s: None)
    finally:
        mp.undo()
    return result.run_dir


def _samples(run_dir: Path, cell: str, task: str) -> dict[int, dict]:
    (path,) = (run_dir / "cells" / cell).glob(f"samples_{task}_*.jsonl")
    return {s["doc_id"]: s for s in map(json.loads, path.read_text().splitlines())}


def test_pareto_lists_every_setting_with_effects_from_the_samples(costs_run):
    report = json.loads((costs_run / "report" / "report.json").read_text())
    assert report["costs"]["reference_condition"] == "base"
    assert set(report["pareto"]) == {"sycophancy", "refusal"}
    for b, entries in report["pareto"].items():
        assert all(FIELDS <= set(e) for e in entries)
        # base x {-1, 0, +1}, pos/neg x {-1, 0, +1}: prompt alone, steering alone, both
        assert {(e["condition"], e["multiplier"]) for e in entries} == {
            (c, m) for c in ("base", "pos", "neg") for m in (-1.0, 0.0, 1.0)
        }
        plain = next(e for e in entries if e["condition"] == "base" and e["multiplier"] == 0)
        assert plain["effect"] == 0 and plain["kl"] == 0 and plain["efficient"]
        task = f"caa_ab_{b}"
        base = _samples(costs_run, f"baseline__base__{task}", task)
        for cond, cell in (
            ("pos", f"baseline__pos__{task}"),
            ("neg", f"{b}__neg__L1__residual__after_instruction__m+1"),
        ):
            mine = _samples(costs_run, cell, task)
            want = np.mean([mine[i]["p_match"] - base[i]["p_match"] for i in base])
            m = 0.0 if cond == "pos" else 1.0
            got = next(e for e in entries if e["condition"] == cond and e["multiplier"] == m)
            assert got["effect"] == pytest.approx(want, abs=1e-12)
            assert got["effect_ci"][0] <= got["effect"] <= got["effect_ci"][1]
    assert (costs_run / "report" / "pareto.png").stat().st_size > 1000
    md = (costs_run / "report" / "report.md").read_text()
    assert "## Steering vs prompting at equal cost" in md and "## Fluency of open-ended answers" in md


def test_prompt_cost_recorded_equals_a_direct_computation(costs_run, tiny_model):
    model, tok = tiny_model
    report = json.loads((costs_run / "report" / "report.json").read_text())
    probe = ScaleProbe(model, tok)
    for b in ("sycophancy", "refusal"):
        cell = json.loads((costs_run / "cells" / f"baseline__pos__caa_ab_{b}" / "cell.json").read_text())
        assert cell["system_instruction"] == behaviour_system_prompt(b, "pos")
        want = prompt_kl(probe, behaviour_system_prompt(b, "pos"))
        got = next(e for e in report["pareto"][b] if e["condition"] == "pos" and e["multiplier"] == 0)
        assert want > 0 and got["kl"] == pytest.approx(want, rel=1e-5)


def test_fluency_rows_are_paired_differences_vs_multiplier_0(costs_run):
    report = json.loads((costs_run / "report" / "report.json").read_text())
    task = "caa_open_sycophancy"
    rows = [r for r in report["fluency"] if r["task"] == task and r["condition"] == "base"]
    assert {r["metric"] for r in rows} == {"perplexity", "distinct_1", "distinct_2", "repetition_4gram"}
    base = _samples(costs_run, f"baseline__base__{task}", task)
    steered = _samples(costs_run, "sycophancy__base__L1__residual__after_instruction__m+1", task)
    row = next(r for r in rows if r["metric"] == "perplexity" and r["multiplier"] == 1)
    want = np.mean([steered[i]["perplexity"] - base[i]["perplexity"] for i in base])
    assert row["diff_vs_0"] == pytest.approx(want, rel=1e-9) and row["n"] == len(base)
