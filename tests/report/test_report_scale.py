"""Every report states the scale of each multiplier (§9.1): steered-hf records, in each results file, the
multiplier as a fraction of the mean residual-stream norm and the next-token KL on the shipped neutral
prompts; the report tabulates both and compares sites and positions per unit of KL. The recorded values are
checked against an independent computation (hooks written here, KL with scipy); a failing scale measurement
never costs the evaluation's results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import rel_entr

from caa_eval import sweep
from caa_eval.analysis.calibrate import neutral_prompts
from caa_eval.core.vectors import load as load_vector
from caa_eval.report import build_report

REPO = Path(__file__).resolve().parents[2]
TINY_DATA = REPO / "examples" / "tiny_data"
LAYER, M = 2, 6.0


@pytest.fixture(scope="module")
def scale_run(tiny_model_dir, tmp_path_factory) -> Path:
    """Sites residual and mlp × positions after_instruction and all × multipliers −6/0/+6 at one layer."""
    out = tmp_path_factory.mktemp("scale") / "run"
    cfg = sweep.config_from_dict(
        {
            "model": str(tiny_model_dir),
            "layers": [LAYER],
            "multipliers": [-M, 0, M],
            "behaviours": [
                {
                    "name": "agree",
                    "pairs": str(TINY_DATA / "agree_pairs.jsonl"),
                    "ab_test": str(TINY_DATA / "agree_test.json"),
                }
            ],
            "sites": ["residual", "mlp"],
            "positions": ["after_instruction", "all"],
            "tasks": ["caa_ab_{behaviour}"],
            "limit": 4,
            "batch_size": 8,
            "device": "cpu",
            "output": str(out),
        }
    )
    sweep.run_sweep(cfg, progress=False, print_fn=lambda _: None)
    return out


def _results(run: Path) -> list[tuple[dict, dict]]:
    """(cell.json, results config.steering) of every cell."""
    out = []
    for cell_dir in sorted((run / "cells").iterdir()):
        cell = json.loads((cell_dir / "cell.json").read_text())
        res = json.loads(next(cell_dir.rglob(cell["results_file"])).read_text())
        out.append((cell, res["config"]["steering"]))
    return out


def independent_scale(model, tok, vec: torch.Tensor, multiplier: float, site: str, every_position: bool):
    """Per neutral prompt, batch 1: add m·v at the block output (residual) or the MLP output, at the last
    prompt token (CAA's first steered token once the chat template's generation prompt is there) or at every
    token; KL(steered ‖ unsteered) of the next token with scipy; residual norm = mean ‖block output‖ over
    every token but the first."""
    block = model.model.layers[LAYER]
    module = block if site == "residual" else block.mlp
    kls, norms = [], []
    for prompt in neutral_prompts():
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True)
        ids = torch.tensor([ids["input_ids"] if hasattr(ids, "keys") else ids])

        def add(mod, args, output):
            h = (output if torch.is_tensor(output) else output[0]).clone()
            if every_position:
                h += multiplier * vec
            else:
                h[:, -1] += multiplier * vec
            return h if torch.is_tensor(output) else (h, *output[1:])

        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
            base = out.logits[0, -1].double().softmax(-1).numpy()
            norms.extend(out.hidden_states[LAYER + 1][0, 1:].norm(dim=-1).tolist())
            handle = module.register_forward_hook(add)
            try:
                steered = model(ids).logits[0, -1].double().softmax(-1).numpy()
            finally:
                handle.remove()
        kls.append(float(rel_entr(steered, base).sum()))
    return abs(multiplier) * float(vec.norm()) / float(np.mean(norms)), float(np.mean(kls))


def test_every_results_file_records_the_scale_equal_to_an_independent_computation(scale_run, tiny_model):
    model, tok = tiny_model
    seen = set()
    for cell, steering in _results(scale_run):
        scale = steering["scale"]
        if cell["multiplier"] == 0:
            assert scale == {"norm_fraction": 0.0, "kl": 0.0, "system_prompt_kl": 0.0, "total_kl": 0.0}
            continue
        vec = load_vector(steering["vector"]).vectors[LAYER].float()
        fraction, kl = independent_scale(
            model, tok, vec, float(cell["multiplier"]), steering["site"], steering["positions"] == "all"
        )
        assert scale["norm_fraction"] == pytest.approx(fraction, rel=1e-5)
        assert scale["kl"] == pytest.approx(kl, rel=1e-3, abs=1e-8)
        assert scale["kl"] > 0 and scale["neutral_prompts"] == len(neutral_prompts())
        assert scale["total_kl"] == scale["kl"] and scale["system_prompt_kl"] == 0.0  # no system prompt here
        seen.add((steering["site"], steering["positions"], cell["multiplier"]))
    assert len(seen) == 8  # 2 sites x 2 positions x 2 multipliers


def test_report_states_scale_and_effect_per_kl(scale_run):
    report = json.loads((scale_run / "report" / "report.json").read_text())
    recorded = {
        (s["site"], s["positions"], s["multiplier"]): s["scale"] for c, s in _results(scale_run) if c["multiplier"] != 0
    }
    settings = report["scale"]["settings"]
    assert len(settings) == 8
    for row in settings:
        want = recorded[(row["site"], row["positions"], row["multiplier"])]
        assert row["kl"] == pytest.approx(want["kl"]) and row["norm_fraction"] == pytest.approx(want["norm_fraction"])
        assert row["behaviour"] == "agree" and row["layer"] == str(LAYER)
    effects = report["scale"]["effects"]
    cells = {(c["site"], c["positions"], c["multiplier"]): c for c in report["cells"] if not c["is_baseline"]}
    assert len(effects) == len(cells) == 8
    for e in effects:
        cell = cells[(e["site"], e["positions"], e["multiplier"])]
        assert e["diff_vs_0"] == pytest.approx(cell["diff_vs_0"])
        assert e["diff_per_kl"] == pytest.approx(cell["diff_vs_0"] / e["kl"])
    md = (scale_run / "report" / "report.md").read_text()
    scale_md = md.split("## Scale of each multiplier")[1].split("\n## ")[0]
    for row in settings:  # every multiplier stated as a norm fraction and a KL
        assert f"{row['norm_fraction']:.3f} · KL {row['kl']:.3g}" in scale_md
    per_kl_md = md.split("## Effect per unit of KL")[1].split("\n## ")[0]
    assert all(site in per_kl_md for site in ("| residual |", "| mlp |"))
    assert all(pos in per_kl_md for pos in ("| after_instruction |", "| all |"))
    figure = next(f for f in report["figures"] if f["kind"] == "effect_vs_kl")
    assert (scale_run / "report" / figure["file"]).stat().st_size > 1000


def test_a_long_table_report_says_why_it_has_no_scale(scale_run, tmp_path):
    from caa_eval.stats import long_table_from_runs

    table = long_table_from_runs(scale_run)
    path = build_report(table, tmp_path / "rep")
    report = json.loads((path.parent / "report.json").read_text())
    assert report["scale"]["settings"] == [] and "long table" in report["scale"]["missing"]
    assert "Not available for a long table" in path.read_text()


def test_a_failing_scale_measurement_keeps_the_results(tiny_model_dir, tmp_path, monkeypatch):
    from caa_eval.analysis import calibrate
    from caa_eval.core.vectors import SteeringVector, model_fingerprint
    from caa_eval.lmeval.model import SteeredHFLM
    from caa_eval.lmeval.run import evaluate_to_folder
    from caa_eval.stats import steering_scales

    def broken(*args, **kwargs):
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(calibrate.ScaleProbe, "__init__", broken)
    lm = SteeredHFLM(pretrained=str(tiny_model_dir), batch_size=4, device="cpu", multiplier=0)
    path = tmp_path / "v.safetensors"
    SteeringVector(
        {LAYER: torch.ones(32) / 32**0.5},
        behaviour="agree",
        model="tiny",
        model_fingerprint=model_fingerprint(lm.model),
    ).save(path)
    lm.set_steering(vector=str(path), multiplier=2.0)
    model_args = {"pretrained": str(tiny_model_dir), "vector": str(path), "layers": LAYER, "multiplier": 2.0}
    results, files = evaluate_to_folder(lm, ["caa_demo_optimism_ab"], tmp_path / "out", limit=2, model_args=model_args)
    assert results["results"] and all(p.is_file() for p in files)
    assert json.loads(files[0].read_text())["config"]["steering"]["scale"] == {"error": "probe exploded"}
    scales = steering_scales(tmp_path / "out")
    assert len(scales) == 1 and scales.iloc[0]["error"] == "probe exploded"
