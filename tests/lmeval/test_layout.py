"""A model whose decoder blocks the structural search cannot find works through every path once `layers_path`
names them: steered-hf (also through the one-pass grid), extraction, the sweep and the demo.

The model is the tiny Llama plus one spare block at the end of its block list (tests/helpers/spare_block.py); the
spare block never runs, so every number must equal the plain tiny model's, which the structural search finds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance

from caa_eval import sweep
from caa_eval.core.extract import extract_to_file
from caa_eval.core.layers import ModelLayout, decoder_layers
from caa_eval.errors import CAAEvalError
from caa_eval.lmeval.model import SteeredHFLM
from tests.helpers.spare_block import LAYERS_PATH, build_spare_block_model, register
from tests.helpers.sweep_data import base_keys, write_caa_layout, write_config

LAYER = 1


@pytest.fixture(scope="module")
def spare_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return build_spare_block_model(tiny_model_dir, tmp_path_factory.mktemp("spare-block"))


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    root = write_caa_layout(tmp_path_factory.mktemp("caa"), behaviours=("sycophancy",), n_pairs=6)
    return root / "generate" / "sycophancy" / "generate_dataset.json"


def _requests(tok) -> list[Instance]:
    out = []
    for q in ("Is it sunny? (A) Yes (B) No", "Pick one, A or B?"):
        ctx = tok.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": "("}],
            tokenize=False,
            continue_final_message=True,
        )
        out += [Instance("loglikelihood", {}, (ctx, c), len(out)) for c in ("A", "B", "A) Yes")]
    return out


def test_the_structural_search_cannot_find_the_blocks(spare_dir):
    from transformers import AutoModelForCausalLM

    register()
    model = AutoModelForCausalLM.from_pretrained(spare_dir)
    with pytest.raises(CAAEvalError, match="layers_path"):
        decoder_layers(model)
    layout = ModelLayout.of(model, LAYERS_PATH)
    assert layout.n_layers == model.config.num_hidden_layers + 1 and layout.hidden_size == model.config.hidden_size


def test_extraction_reads_what_the_plain_model_reads(spare_dir, tiny_model_dir, pairs_file, tmp_path):
    plain = extract_to_file(str(tiny_model_dir), pairs_file, tmp_path / "plain.safetensors", layers=[1, 2])
    spare = extract_to_file(
        str(spare_dir), pairs_file, tmp_path / "spare.safetensors", layers=[1, 2], layers_path=LAYERS_PATH
    )
    for layer in (1, 2):
        torch.testing.assert_close(spare.vectors[layer], plain.vectors[layer], rtol=1e-5, atol=1e-6)
    assert float(plain.vectors[1].norm()) > 0


def test_steered_hf_and_its_grid_equal_the_plain_model(spare_dir, tiny_model_dir, pairs_file, tmp_path):
    sv = extract_to_file(str(tiny_model_dir), pairs_file, tmp_path / "v.safetensors", layers=[LAYER])
    configs = [{"multiplier": 0}] + [{"vector": sv, "layers": LAYER, "multiplier": m} for m in (-100.0, 100.0)]
    results = {}
    for name, path, extra in (("plain", tiny_model_dir, {}), ("spare", spare_dir, {"layers_path": LAYERS_PATH})):
        lm = SteeredHFLM(pretrained=str(path), batch_size=4, device="cpu", multiplier=0, **extra)
        tok = lm.tokenizer
        separate = []
        for config in configs:  # hooks per forward
            lm.set_steering(**config, allow_fingerprint_mismatch=True)
            separate.append([ll for ll, _ in lm.loglikelihood(_requests(tok))])
        lm.plan_grid([dict(c, allow_fingerprint_mismatch=True) for c in configs])  # one pass, tail steered
        grid = []
        for config in configs:
            lm.set_steering(**config, allow_fingerprint_mismatch=True)
            grid.append([ll for ll, _ in lm.loglikelihood(_requests(tok))])
        results[name] = (separate, grid, lm.steering_scale()["kl"])
    (plain_sep, plain_grid, plain_kl), (spare_sep, spare_grid, spare_kl) = results["plain"], results["spare"]
    np.testing.assert_allclose(spare_sep, plain_sep, atol=1e-4)
    np.testing.assert_allclose(spare_grid, plain_grid, atol=1e-4)
    np.testing.assert_allclose(spare_grid, spare_sep, atol=1e-4)
    assert spare_kl == pytest.approx(plain_kl, rel=1e-4) and plain_kl > 0  # the scale probe hooks the same block
    assert max(abs(a - b) for a, b in zip(plain_sep[2], plain_sep[0])) > 1e-2, "steering had no effect"


def _cell_lls(run_dir: Path) -> dict[str, list[float]]:
    out = {}
    for cell in sorted((run_dir / "cells").iterdir()):
        samples = sorted(cell.glob("samples_*.jsonl"))
        rows = [json.loads(line) for f in samples for line in f.read_text().splitlines() if line.strip()]
        out[cell.name] = [float(r["p_match"]) for r in sorted(rows, key=lambda r: r["doc_id"])]
    return out


def test_sweep_with_layers_path_equals_the_plain_sweep(spare_dir, tiny_model_dir, tmp_path, monkeypatch):
    from caa_eval.core import vectors

    caa = write_caa_layout(tmp_path / "caa", behaviours=("sycophancy",), n_pairs=6, n_test=4)
    monkeypatch.setenv("CAA_EVAL_DATA_DIR", str(caa))
    loads: list[str] = []
    original = vectors.load

    def counted(path):
        loads.append(str(path))
        return original(path)

    monkeypatch.setattr(vectors, "load", counted)
    runs = {}
    for name, path, extra in (
        ("plain", tiny_model_dir, {}),
        ("spare", spare_dir, {"conditions": [{"name": "base", "model_args": {"layers_path": LAYERS_PATH}}]}),
    ):
        keys = base_keys(path, tmp_path / name, behaviours=["sycophancy"], layers=[1, 2], report=False, **extra)
        result = sweep.run_sweep(
            sweep.load_config(write_config(tmp_path / f"{name}.yaml", **keys)), progress=False, print_fn=lambda s: None
        )
        runs[name] = _cell_lls(result.run_dir)
    assert len(runs["spare"]) == 5 and all(runs["spare"].values())
    plain = {k.replace("__base", ""): v for k, v in runs["plain"].items()}
    spare = {k.replace("__base", ""): v for k, v in runs["spare"].items()}
    assert spare.keys() == plain.keys()
    for cell in plain:
        assert spare[cell] == pytest.approx(plain[cell], abs=1e-5), cell
    # each vector file of a sweep is read once (when the store finalises), not once per cell and plan
    per_file = {f: loads.count(f) for f in set(loads)}
    assert per_file and set(per_file.values()) == {1}, per_file


def test_demo_runs_on_the_model_that_needs_layers_path(spare_dir, tmp_path, capsys):
    from caa_eval.demo import run_demo

    kwargs = {"multipliers": (-2.0, 0.0, 2.0), "open_multipliers": (0.0,), "layer": 1, "limit": 2, "max_gen_toks": 4}
    text = run_demo(tmp_path / "demo", model=str(spare_dir), layers_path=LAYERS_PATH, **kwargs)
    assert "| +2 |" in text and "| -2 |" in text
    runs = tmp_path / "demo" / "runs"
    assert {p.name for p in runs.iterdir()} == {"m-2", "m+0", "m+2"}
    for m in ("-2", "+0", "+2"):
        recorded = json.loads(next((runs / f"m{m}").glob("results_*.json")).read_text())
        assert float(recorded["config"]["model_args"]["multiplier"]) == float(m)
        assert recorded["config"]["steering"]["multiplier"] == float(m) and (m == "+0") == (
            recorded["config"]["steering"]["vector"] is None
        )
