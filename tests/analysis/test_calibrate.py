"""Scale of a multiplier (§9.1): KL is 0 at multiplier 0 and grows with |multiplier|; KL and residual norms
equal an independent batch-1 computation; calibrate hits its target KL within tolerance; the CLI prints it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import rel_entr

from caa_eval.analysis.calibrate import ScaleProbe, calibrate, multiplier_scale, neutral_prompts
from caa_eval.cli import main
from caa_eval.core.vectors import SteeringVector, model_fingerprint
from caa_eval.errors import CAAEvalError

LAYER = 1
PROMPTS = [
    "How long should an egg boil?",
    "Why is the sky blue on a clear day?",
    "Name a grey kitten.",
    "What is the capital of France?",
]


@pytest.fixture(scope="module")
def vec(tiny_model):
    model, _ = tiny_model
    torch.manual_seed(5)
    v = torch.randn(model.config.hidden_size)
    return 0.2 * v / v.norm()  # about twice the tiny model's mean residual norm at LAYER


@pytest.fixture(scope="module")
def probe(tiny_model):
    model, tok = tiny_model
    return ScaleProbe(model, tok, PROMPTS)


def test_shipped_neutral_prompts():
    prompts = neutral_prompts()
    assert len(prompts) >= 10 and len(set(prompts)) == len(prompts)
    assert all(isinstance(p, str) and p.endswith("?") for p in prompts)


def independent(model, tok, vec, layer, multiplier, every_position=False):
    """Batch 1 per prompt: hook adding m·v at the last position (or at every position) of the block output;
    KL(steered ‖ unsteered) with scipy, and the other direction; residual norms."""
    kls, reverse, norms = [], [], []
    for prompt in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True)
        ids = torch.tensor([ids["input_ids"] if hasattr(ids, "keys") else ids])
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
            base = out.logits[0, -1].double().softmax(-1).numpy()
            norms.extend(out.hidden_states[layer + 1][0, 1:].norm(dim=-1).tolist())

            def add(module, args, output):
                h = output if torch.is_tensor(output) else output[0]
                h = h.clone()
                if every_position:
                    h += multiplier * vec
                else:
                    h[:, -1] += multiplier * vec
                return h if torch.is_tensor(output) else (h, *output[1:])

            handle = model.model.layers[layer].register_forward_hook(add)
            try:
                steered = model(ids).logits[0, -1].double().softmax(-1).numpy()
            finally:
                handle.remove()
        kls.append(float(rel_entr(steered, base).sum()))
        reverse.append(float(rel_entr(base, steered).sum()))
    return float(np.mean(kls)), float(np.mean(norms)), float(np.mean(reverse))


def test_kl_and_norm_equal_independent_computation(tiny_model, vec, probe):
    model, tok = tiny_model
    gaps = []
    for m in (0.0, 0.7, -2.0, 8.0, -12.0):
        ref_kl, ref_norm, ref_reverse = independent(model, tok, vec, LAYER, m)
        kl, per_prompt = probe.kl(vec, LAYER, m)
        assert len(per_prompt) == len(PROMPTS)
        assert kl == pytest.approx(ref_kl, rel=1e-3, abs=1e-7)
        assert probe.resid_norm(LAYER) == pytest.approx(ref_norm, rel=1e-5)
        gaps.append(abs(ref_kl - ref_reverse) / max(ref_kl, 1e-12))
    # the two KL directions differ by ~100x the 1e-3 tolerance here (measured 0.19 at m=-2): a probe that
    # computed KL(unsteered ‖ steered) would fail above
    assert max(gaps) > 0.1, gaps


def test_kl_with_every_position_steered(tiny_model, vec, probe):
    model, tok = tiny_model
    ref_kl, _, _ = independent(model, tok, vec, LAYER, 0.7, every_position=True)
    assert probe.kl(vec, LAYER, 0.7, positions="all")[0] == pytest.approx(ref_kl, rel=1e-3)
    assert probe.kl(vec, LAYER, 0.7, positions="span:0:")[0] == pytest.approx(probe.kl(vec, LAYER, 0.7)[0], rel=1e-9)
    assert ref_kl != pytest.approx(probe.kl(vec, LAYER, 0.7)[0], rel=1e-2)


def test_kl_zero_at_zero_and_grows_with_abs_multiplier(tiny_model, vec, probe):
    assert probe.kl(vec, LAYER, 0.0)[0] == pytest.approx(0.0, abs=1e-9)
    for sign in (1, -1):
        kls = [probe.kl(vec, LAYER, sign * m)[0] for m in (0.25, 0.5, 1.0, 2.0, 4.0)]
        assert kls[0] > 0 and all(b > a for a, b in zip(kls, kls[1:])), kls


def test_multiplier_scale_rows(tiny_model, vec, probe):
    model, tok = tiny_model
    sv = SteeringVector(vectors={LAYER: vec}, behaviour="x", model="tiny", model_fingerprint=model_fingerprint(model))
    rows = multiplier_scale(model, tok, sv, LAYER, [-2.0, 0.0, 1.0], probe=probe)
    assert [r.multiplier for r in rows] == [-2.0, 0.0, 1.0]
    for r in rows:
        assert r.site == "residual" and r.positions == "after_instruction" and r.layer == LAYER
        assert r.norm_fraction == pytest.approx(abs(r.multiplier) * float(vec.norm()) / probe.resid_norm(LAYER))
        assert r.kl == pytest.approx(probe.kl(vec, LAYER, r.multiplier)[0])
    assert rows[1].kl == pytest.approx(0.0, abs=1e-9) and rows[0].kl > rows[2].kl > 0
    # (in a Llama block adding to the MLP output equals adding to the block output; the attention output differs)
    attn = multiplier_scale(model, tok, vec, LAYER, [1.0], site="attn", probe=probe)[0]
    assert attn.site == "attn" and attn.kl > 0 and attn.kl != pytest.approx(rows[2].kl)


@pytest.mark.parametrize("target, direction", [(0.05, 1), (0.5, 1), (0.2, -1)])
def test_calibrate_hits_target_within_tolerance(tiny_model, vec, probe, target, direction):
    model, tok = tiny_model
    cal = calibrate(model, tok, vec, LAYER, target, direction, tolerance=0.02, probe=probe)
    assert cal.multiplier is not None and np.sign(cal.multiplier) == direction
    achieved = probe.kl(vec, LAYER, cal.multiplier)[0]
    assert abs(achieved - target) <= 0.02 * target
    assert cal.kl == pytest.approx(achieved)
    assert cal.norm_fraction == pytest.approx(abs(cal.multiplier) * float(vec.norm()) / probe.resid_norm(LAYER))


def test_calibrate_not_reached_and_bad_target(tiny_model, vec, probe):
    model, tok = tiny_model
    cal = calibrate(model, tok, vec, LAYER, 0.5, max_multiplier=0.01, probe=probe)
    assert cal.multiplier is None and cal.kl is None
    with pytest.raises(CAAEvalError, match="positive target KL"):
        calibrate(model, tok, vec, LAYER, 0.0, probe=probe)


def test_cli_calibrate(tiny_model_dir, tiny_model, vec, tmp_path, capsys):
    model, tok = tiny_model
    path = SteeringVector(
        vectors={LAYER: vec, 2: vec.clone()},
        behaviour="sycophancy",
        model="tiny",
        model_fingerprint=model_fingerprint(model),
    ).save(tmp_path / "v.safetensors")
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(PROMPTS))
    out, md = tmp_path / "c.json", tmp_path / "c.md"
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(tiny_model_dir),
                "--vector",
                str(path),
                "--layer",
                str(LAYER),
                "--kl",
                "0.1",
                "--direction",
                "both",
                "--multipliers=-1,1",
                "--prompts",
                str(prompts),
                "--json",
                str(out),
                "--markdown",
                str(md),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "reaches KL" in text and "mean residual-stream norm" in text
    data = json.loads(out.read_text())
    (entry,) = data["vectors"]
    plus, minus = entry["calibration"]
    assert plus["multiplier"] > 0 > minus["multiplier"]
    probe = ScaleProbe(model, tok, PROMPTS)
    for cal in (plus, minus):
        assert abs(probe.kl(vec, LAYER, cal["multiplier"])[0] - 0.1) <= 0.002
    assert [row["multiplier"] for row in entry["scale"]] == [-1.0, 1.0]
    assert md.read_text().count("\n") == 3
    assert (
        main(["calibrate", "--model", str(tiny_model_dir), "--vector", str(path), "--layer", "7", "--kl", "0.1"]) == 2
    )
