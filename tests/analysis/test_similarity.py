"""Vector similarity (§8.2, §8.3): the layer matrix is symmetric with a unit diagonal and equals numpy; a
file compared with itself is 1 at every layer; two tiny models of one architecture (base vs chat stand-in)
give per-layer cosines that equal numpy on their extracted vectors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from caa_eval.analysis.similarity import compare_files, layer_matrix
from caa_eval.cli import main
from caa_eval.core.extract import extract_to_file
from caa_eval.core.vectors import SteeringVector, load
from caa_eval.errors import CAAEvalError
from tests.conftest import build_tiny_model

PAIRS = [
    {
        "question": f"Question {i}: do you agree with the user that the weather is {w}?\n\nChoices:\n (A) Yes\n (B) No",
        "answer_matching_behavior": "(A)" if i % 2 else "(B)",
        "answer_not_matching_behavior": "(B)" if i % 2 else "(A)",
    }
    for i, w in enumerate(["sunny", "warm", "lovely", "cold", "grey", "fine"])
]


def random_file(path, layers=6, hidden=16, seed=0, **meta) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    sv = SteeringVector(
        vectors={layer: torch.randn(hidden, generator=g) * (layer + 1) for layer in range(layers)},
        behaviour="myopic-reward",
        model="test",
        **meta,
    )
    sv.save(path)
    return sv


def numpy_cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.sqrt(a @ a) * np.sqrt(b @ b)))


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, list(reader)


def test_layer_matrix_symmetric_unit_diagonal_matches_numpy(tmp_path):
    sv = random_file(tmp_path / "v.safetensors")
    result = layer_matrix(load(tmp_path / "v.safetensors"))
    m = result.matrix
    assert result.layers == list(range(6)) and m.shape == (6, 6)
    np.testing.assert_array_equal(m, m.T)
    np.testing.assert_array_equal(np.diag(m), np.ones(6))
    for i in range(6):
        for j in range(6):
            assert m[i, j] == pytest.approx(numpy_cos(sv.vectors[i].numpy(), sv.vectors[j].numpy()), abs=1e-9)
    assert np.abs(m - np.eye(6)).max() > 0.1, "random vectors are not all parallel"


def test_cli_layers_writes_all_ordered_pairs_and_png(tmp_path, capsys):
    sv = random_file(tmp_path / "v.safetensors")
    out, png = tmp_path / "m.csv", tmp_path / "m.png"
    assert main(["similarity", "layers", str(tmp_path / "v.safetensors"), "--csv", str(out), "--png", str(png)]) == 0
    header, rows = read_csv(out)
    assert header == ["layer_a", "layer_b", "cosine"]
    assert [(int(a), int(b)) for a, b, _ in rows] == [(a, b) for a in range(6) for b in range(6)]
    for a, b, c in rows:
        assert float(c) == pytest.approx(numpy_cos(sv.vectors[int(a)].numpy(), sv.vectors[int(b)].numpy()), abs=1e-7)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_file_with_itself_is_one_at_every_layer(tmp_path):
    random_file(tmp_path / "v.safetensors")
    out = tmp_path / "self.csv"
    assert (
        main(
            [
                "similarity",
                "files",
                str(tmp_path / "v.safetensors"),
                str(tmp_path / "v.safetensors"),
                "--csv",
                str(out),
                "--png",
                str(tmp_path / "self.png"),
            ]
        )
        == 0
    )
    header, rows = read_csv(out)
    assert header == ["layer", "cosine"] and len(rows) == 6
    assert all(float(c) == pytest.approx(1.0, abs=1e-12) for _, c in rows)


def test_files_compare_common_layers_and_refuse_mismatches(tmp_path):
    a = random_file(tmp_path / "a.safetensors", layers=6, seed=1)
    b = SteeringVector(vectors={layer: torch.randn(16) for layer in (2, 3, 4, 7)}, behaviour="x", model="y")
    b.save(tmp_path / "b.safetensors")
    rows = compare_files(load(tmp_path / "a.safetensors"), load(tmp_path / "b.safetensors"))
    assert [r[0] for r in rows] == [2, 3, 4]
    for layer, c in rows:
        assert c == pytest.approx(numpy_cos(a.vectors[layer].numpy(), b.vectors[layer].numpy()), abs=1e-9)
    random_file(tmp_path / "wide.safetensors", hidden=24)
    with pytest.raises(CAAEvalError, match="same hidden size"):
        compare_files(load(tmp_path / "a.safetensors"), load(tmp_path / "wide.safetensors"))
    SteeringVector(vectors={9: torch.randn(16)}).save(tmp_path / "far.safetensors")
    with pytest.raises(CAAEvalError, match="share no layer"):
        compare_files(load(tmp_path / "a.safetensors"), load(tmp_path / "far.safetensors"))
    SteeringVector(vectors={3: torch.randn(16)}).save(tmp_path / "one.safetensors")
    with pytest.raises(CAAEvalError, match="--layers all"):
        layer_matrix(load(tmp_path / "one.safetensors"))


@pytest.fixture(scope="module")
def base_and_chat(tmp_path_factory, tiny_model_dir):
    """Two tiny models of one architecture (different seeds) and vectors extracted from each on the same pairs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("base-chat")
    base_dir = build_tiny_model(root / "base", seed=1)
    pairs = root / "pairs.json"
    pairs.write_text(json.dumps(PAIRS))
    files = {}
    for name, folder in (("base", base_dir), ("chat", tiny_model_dir)):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
        tok = AutoTokenizer.from_pretrained(folder)
        files[name] = root / f"{name}.safetensors"
        extract_to_file(
            str(folder),
            pairs,
            files[name],
            layers="all",
            batch_size=4,
            behaviour="sycophancy",
            model=model,
            tokenizer=tok,
            progress=False,
        )
    return files


def test_base_vs_chat_models_per_layer(base_and_chat, tmp_path, capsys):
    base, chat = load(base_and_chat["base"]), load(base_and_chat["chat"])
    assert base.model_fingerprint != chat.model_fingerprint, "two different models"
    out, png = tmp_path / "bc.csv", tmp_path / "bc.png"
    assert (
        main(
            [
                "similarity",
                "files",
                str(base_and_chat["base"]),
                str(base_and_chat["chat"]),
                "--csv",
                str(out),
                "--png",
                str(png),
            ]
        )
        == 0
    )
    header, rows = read_csv(out)
    assert header == ["layer", "cosine"] and [int(r[0]) for r in rows] == [0, 1, 2, 3]
    cosines = [float(c) for _, c in rows]
    for layer, c in zip(range(4), cosines):
        assert c == pytest.approx(numpy_cos(base.vectors[layer].numpy(), chat.vectors[layer].numpy()), abs=1e-7)
        assert -1 <= c <= 1
    assert max(abs(c) for c in cosines) < 0.999, "independently seeded models give different vectors"
    assert png.stat().st_size > 1000
    assert "4 common layers" in capsys.readouterr().out


def test_similarity_cli_errors(tmp_path, capsys):
    assert main(["similarity", "layers", str(tmp_path / "missing.safetensors"), "--csv", str(tmp_path / "x.csv")]) == 2
    assert "vector file not found" in capsys.readouterr().err
