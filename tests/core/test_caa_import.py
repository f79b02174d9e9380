"""CAA's published vector layout in and out: import-caa, then normalize reproduces CAA's normalized_vectors."""

from __future__ import annotations

import pickle

import pytest
import torch

from caa_eval.cli import main
from caa_eval.core.caa_layout import import_caa_dir, read_caa_dir
from caa_eval.core.vectors import load
from caa_eval.errors import CAAEvalError
from caa_eval.vocab import BEHAVIOURS

MODEL = "Llama-2-7b-chat-hf"
LAYERS = (12, 13, 14)


def write_caa_dirs(root):
    """Raw vectors with different norms per behaviour, and CAA's normalisation of them written from its
    description: per layer, every vector rescaled to the mean of the 7 norms."""
    torch.manual_seed(0)
    raw = {b: {layer: torch.randn(64) * (1 + i) for layer in LAYERS} for i, b in enumerate(BEHAVIOURS)}
    for name, vecs in (("vectors", raw), ("normalized_vectors", None)):
        for b in BEHAVIOURS:
            (root / name / b).mkdir(parents=True)
            for layer in LAYERS:
                if vecs is None:
                    mean_norm = sum(raw[x][layer].norm() for x in BEHAVIOURS) / len(BEHAVIOURS)
                    v = raw[b][layer] * mean_norm / raw[b][layer].norm()
                else:
                    v = vecs[b][layer]
                torch.save(v, root / name / b / f"vec_layer_{layer}_{MODEL}.pt")
    return root / "vectors", root / "normalized_vectors"


def test_import_then_normalize_reproduces_caa(tmp_path, capsys):
    raw_dir, norm_dir = write_caa_dirs(tmp_path / "caa")
    assert main(["import-caa", str(raw_dir), "--out-dir", str(tmp_path / "raw")]) == 0
    assert main(["import-caa", str(norm_dir), "--out-dir", str(tmp_path / "norm")]) == 0
    raw_files = sorted((tmp_path / "raw" / MODEL).glob("*.safetensors"))
    assert len(raw_files) == 7
    first = load(raw_files[0])
    assert first.model == MODEL and first.layers == list(LAYERS) and first.normalization is None
    assert load(tmp_path / "norm" / MODEL / "sycophancy.safetensors").normalization["method"] == "caa_mean_norm"
    assert main(["normalize", *map(str, raw_files), "--out-dir", str(tmp_path / "ours")]) == 0
    for b in BEHAVIOURS:
        ours = load(tmp_path / "ours" / f"{b}.safetensors")
        caa = load(tmp_path / "norm" / MODEL / f"{b}.safetensors")
        assert ours.normalization["method"] == "caa_mean_norm"
        for layer in LAYERS:
            assert torch.allclose(ours.vectors[layer], caa.vectors[layer], rtol=1e-5, atol=1e-6), (b, layer)
    assert "CAA-normalised" in capsys.readouterr().out


def test_detection_by_norms_and_asking(tmp_path):
    raw_dir, norm_dir = write_caa_dirs(tmp_path / "caa")
    (tmp_path / "copy_norm").mkdir()
    norm_dir.rename(tmp_path / "copy_norm" / "mine")
    written = import_caa_dir(tmp_path / "copy_norm" / "mine", tmp_path / "out")
    assert all(load(p).normalization for p in written)  # equal norms per layer: detected as normalised
    single = tmp_path / "one" / "sycophancy"
    single.mkdir(parents=True)
    torch.save(torch.ones(8), single / f"vec_layer_3_{MODEL}.pt")
    with pytest.raises(CAAEvalError, match="--normalized yes"):
        import_caa_dir(tmp_path / "one", tmp_path / "out2")
    assert load(import_caa_dir(tmp_path / "one", tmp_path / "out3", normalized=False)[0]).layers == [3]


def test_import_refuses_pickles_and_junk(tmp_path):
    folder = tmp_path / "vectors" / "refusal"
    folder.mkdir(parents=True)

    class Boom:
        def __reduce__(self):
            return (print, ("pickle executed",))

    with open(folder / f"vec_layer_1_{MODEL}.pt", "wb") as f:
        pickle.dump(Boom(), f)
    with pytest.raises(CAAEvalError, match="loads safely"):
        read_caa_dir(tmp_path / "vectors")
    torch.save(torch.ones(2, 3), folder / f"vec_layer_1_{MODEL}.pt")
    with pytest.raises(CAAEvalError, match="1-D"):
        read_caa_dir(tmp_path / "vectors")
    with pytest.raises(CAAEvalError, match="no <behavior>"):
        read_caa_dir(tmp_path)


def test_steered_hf_reads_a_caa_file_directly(tmp_path):
    raw_dir, norm_dir = write_caa_dirs(tmp_path / "caa")
    sv = load(norm_dir / "refusal" / f"vec_layer_13_{MODEL}.pt")
    assert sv.layers == [13] and sv.behaviour == "refusal" and sv.model == MODEL and sv.normalization
    assert load(raw_dir / "refusal" / f"vec_layer_13_{MODEL}.pt").normalization is None
    torch.save(torch.ones(4), tmp_path / "plain.pt")
    with pytest.raises(CAAEvalError, match="import-caa"):
        load(tmp_path / "plain.pt")
