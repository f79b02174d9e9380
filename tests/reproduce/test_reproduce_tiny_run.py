"""`reproduce run` of a reduced ab-7b on a tiny random Llama, then `reproduce compare` against a planted reference
table: `reproduced` where the planted number equals ours, `differs` where it is planted off, the reference cells
the reduced run lacks listed, exit code 1. Our means are read back here from lm-eval's samples files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from caa_eval import cli
from caa_eval.reproduce import reference as reference_module
from caa_eval.vocab import behaviour_of_task, samples_task

BEHAVIOURS = ("corrigible-neutral-HHH", "coordinate-other-ais")  # the two smallest generate sets
LIMIT = 3


def _deeper_tiny_model(tiny_model_dir: Path, folder: Path, layers: int = 14) -> Path:
    """The session's tiny Llama with enough layers for CAA's layer 13 (same tokenizer, random weights)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def _our_scores(run_dir: Path) -> dict[tuple[str, float, str], list[float]]:
    """(behaviour, multiplier, condition) -> p_match of the cell's items, read from lm-eval's samples files."""
    scores = {}
    for cell_dir in sorted((run_dir / "cells").iterdir()):
        cell = json.loads((cell_dir / "cell.json").read_text(encoding="utf-8"))
        files = sorted(cell_dir.rglob("samples_caa_ab_*.jsonl"))
        samples = [json.loads(line) for f in files for line in f.open()]
        assert len(samples) == LIMIT, cell_dir
        # a shared baseline cell names no behaviour (issue 27): its task does
        behaviour = cell["behaviour"] or behaviour_of_task(samples_task(files[0]) or "", BEHAVIOURS)
        scores[(behaviour, float(cell["multiplier"]), cell["condition"])] = [s["p_match"] for s in samples]
    return scores


def _off(items: list[float]) -> float | None:
    """A planted number outside every item's score by 0.06 (so outside our CI and the 0.05 tolerance)."""
    if max(items) + 0.06 <= 1:
        return max(items) + 0.06
    return min(items) - 0.06 if min(items) - 0.06 >= 0 else None


def _plant(folder: Path, values: dict[tuple[str, float, str], float]) -> Path:
    folder.mkdir(parents=True)
    cols = ["behavior", "type", "model_size", "layer", "multiplier", "system_prompt", "override_vector"]
    cols += ["override_vector_model", "finetuned", "n", "p_mean_repo_formula", "mean_ab_mass", "file"]
    with (folder / reference_module.AB_FILE).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, cols + ["p_category_macro_mean"])
        writer.writeheader()
        for (b, m, cond), v in values.items():
            sp = "" if cond == "none" else cond
            writer.writerow(
                {"behavior": b, "type": "ab", "model_size": "7b", "layer": 13, "multiplier": m, "system_prompt": sp}
                | {"n": 50, "p_mean_repo_formula": v}
            )
    return folder


def test_reduced_ab_7b_run_then_compare_with_a_planted_reference(
    tiny_model_dir, caa_env, tmp_path, monkeypatch, capsys
):
    model = _deeper_tiny_model(tiny_model_dir, tmp_path / "tiny14")
    run_dir = tmp_path / "run"
    argv = ["reproduce", "run", "ab-7b", "--model", str(model), "--limit", str(LIMIT), "--out", str(run_dir)]
    assert cli.main([*argv, "--behaviours", ",".join(BEHAVIOURS)]) == 0
    assert f"verdict: caa-eval reproduce compare {run_dir} --reference ab-7b" in capsys.readouterr().out
    scores = _our_scores(run_dir)
    assert len(scores) == 2 * 3 * 3  # 2 behaviours x 3 conditions x multipliers -1/0/+1
    ours = {k: float(np.mean(v)) for k, v in scores.items()}
    off = {k: _off(v) for k, v in sorted(scores.items()) if _off(v) is not None}
    off = dict(list(off.items())[:2])
    assert len(off) == 2
    planted = {k: off.get(k, v) for k, v in ours.items()}
    planted[("refusal", 1.0, "none")] = 0.9  # a behaviour the reduced run does not have
    monkeypatch.setattr(reference_module, "REFERENCE_DIR", _plant(tmp_path / "planted", planted))
    out_json = tmp_path / "verdict.json"
    code = cli.main(["reproduce", "compare", str(run_dir), "--reference", "ab-7b", "--json", str(out_json)])
    data = json.loads(out_json.read_text(encoding="utf-8"))
    verdicts = {(c["behaviour"], c["multiplier"], c["condition"]): c for c in data["cells"]}
    assert set(verdicts) == set(ours)
    for key, cell in verdicts.items():
        assert cell["ours"] == pytest.approx(ours[key], abs=1e-6)
        assert cell["verdict"] == ("differs" if key in off else "reproduced"), key
    assert (data["reproduced"], data["compared"]) == (16, 18)
    assert data["only_reference"] == [{"behaviour": "refusal", "layer": 13, "multiplier": 1.0, "condition": "none"}]
    assert code == 1
    summary = capsys.readouterr().out.splitlines()[0]
    assert summary.startswith("ab-7b: 16/18 cells reproduced; differs: ") and summary.endswith(
        "only in the reference: 1"
    )
