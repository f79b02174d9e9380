"""CAA's layer transfer (§8.2): one layer's vector added at every swept layer, in steered-hf and in a sweep."""

from __future__ import annotations

import json

import pytest
import torch

from caa_eval.core.vectors import SteeringVector, model_fingerprint
from caa_eval.errors import CAAEvalError
from caa_eval.lmeval.model import SteeredHFLM


def test_vector_layer_adds_that_layers_vector_everywhere(tiny_model_dir, tiny_model, tmp_path):
    model, _ = tiny_model
    torch.manual_seed(7)
    sv = SteeringVector(
        {layer: torch.randn(model.config.hidden_size) for layer in range(4)},
        behaviour="t",
        model="tiny",
        model_fingerprint=model_fingerprint(model),
    )
    path = sv.save(tmp_path / "t.safetensors")
    lm = SteeredHFLM(
        pretrained=str(tiny_model_dir),
        vector=str(path),
        layers=[0, 1, 3],
        vector_layer=2,
        multiplier=3,
        batch_size=2,
        device="cpu",
    )
    assert lm.steering_config["vector_layer"] == 2 and lm.steering_config["layers"] == [0, 1, 3]
    for layer in (0, 1, 3):
        assert torch.equal(lm._steering.vectors[layer], sv.vectors[2])
    lm.set_steering(vector=str(path), layers=[1], multiplier=3)
    assert torch.equal(lm._steering.vectors[1], sv.vectors[1]) and "vector_layer" not in lm.steering_config
    with pytest.raises(CAAEvalError, match="one, e.g. vector_layer=13"):
        lm.set_steering(vector=str(path), layers=[1], vector_layer="1-2")


def test_sweep_with_vector_layer_draws_the_transfer_curve(tmp_path, tiny_model_dir, monkeypatch):
    from caa_eval import sweep
    from tests.helpers.sweep_data import base_keys, write_caa_layout, write_config

    monkeypatch.setenv("CAA_EVAL_DATA_DIR", str(write_caa_layout(tmp_path / "data")))
    keys = base_keys(
        tiny_model_dir,
        tmp_path / "run",
        layers=[0, 1, 3],
        vector_layer=2,
        multipliers=[-8, 0, 8],
        normalize=False,
        behaviours=["sycophancy"],
    )
    result = sweep.run_sweep(
        sweep.load_config(write_config(tmp_path / "s.yaml", **keys)), progress=False, print_fn=lambda _: None
    )
    steered = [c for c in result.cells if not c.is_baseline]
    assert len(steered) == 6 and all("__from2__" in c.id and c.vector_layer == 2 for c in steered)
    vec = json.loads((result.run_dir / "manifest.json").read_text())
    assert vec["config"]["vector_layer"] == 2
    for c in steered:
        info = json.loads((result.run_dir / "cells" / c.id / "cell.json").read_text())
        assert info["steering_config"]["vector_layer"] == 2 and info["steering_config"]["layers"] == c.layer
    from caa_eval.core.vectors import load

    assert load(tmp_path / "run" / "vectors" / "sycophancy.safetensors").layers == [2]  # only the read layer
    report = json.loads((result.run_dir / "report" / "report.json").read_text())
    kinds = [f["kind"] for f in report["figures"]]
    assert "layer_transfer" in kinds, kinds
    assert "Layer transfer" in (result.run_dir / "report" / "report.md").read_text()


def test_layer_transfer_equals_a_run_steered_by_hand_with_that_layers_vector(tiny_model_dir, tiny_model, tmp_path):
    """steered-hf with vector_layer=2 at layers [1, 3] == a forward hook (written here) adding m·v[2] to the outputs
    of blocks 1 and 3 at every position; the blocks' own vectors would give other numbers."""
    from lm_eval.api.instance import Instance

    model, tok = tiny_model
    torch.manual_seed(11)
    vectors = {layer: torch.randn(model.config.hidden_size) for layer in range(4)}
    path = SteeringVector(vectors, behaviour="t", model="tiny", model_fingerprint=model_fingerprint(model)).save(
        tmp_path / "t.safetensors"
    )
    m = 2.5
    lm = SteeredHFLM(
        pretrained=str(tiny_model_dir),
        vector=str(path),
        layers=[1, 3],
        vector_layer=2,
        multiplier=m,
        positions="all",
        batch_size=2,
        device="cpu",
    )
    pairs = [("Is the sky green? (A) Yes (B) No\nAnswer: (", "A"), ("Name a colour of the sea:", " blue and grey")]
    got = [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)])]

    def by_hand(added: dict[int, torch.Tensor]) -> list[float]:
        def hook_for(v):
            def hook(module, args, output):
                h = output if torch.is_tensor(output) else output[0]
                h = h + m * v
                return h if torch.is_tensor(output) else (h, *output[1:])

            return hook

        out = []
        for context, continuation in pairs:
            ctx, cont = lm._encode_pair(context, continuation)
            ids = torch.tensor([ctx + cont])
            handles = [model.model.layers[layer].register_forward_hook(hook_for(v)) for layer, v in added.items()]
            try:
                with torch.no_grad():
                    logp = model(ids[:, :-1]).logits[0].double().log_softmax(-1)
            finally:
                for h in handles:
                    h.remove()
            rows = logp[len(ctx) - 1 :]
            out.append(float(sum(rows[j, t] for j, t in enumerate(cont))))
        return out

    transfer = by_hand({1: vectors[2], 3: vectors[2]})
    own = by_hand({1: vectors[1], 3: vectors[3]})
    assert got == pytest.approx(transfer, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(transfer, own)) > 1e-2  # the check can tell the vectors apart
