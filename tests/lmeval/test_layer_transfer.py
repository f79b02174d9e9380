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
