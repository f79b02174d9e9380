"""`reproduce run NAME --vectors caa DIR`: CAA's published raw vector files are imported into the run folder and
the experiment steers with them (nothing left to extract); CAA's normalised files and a folder without the
experiment's model are refused in one line."""

from __future__ import annotations

import pytest
import torch

from caa_eval import reproduce
from caa_eval.core.caa_layout import write_caa_dir
from caa_eval.core.vectors import SteeringVector, load
from caa_eval.errors import CAAEvalError
from caa_eval.reproduce.run import experiment_config, import_caa_vectors
from caa_eval.sweep.vector_store import VectorStore

BEHAVIOURS = ["sycophancy", "refusal"]
MODEL = "meta-llama/Llama-2-7b-chat-hf"


def _caa_folder(root, name="vectors", scale=(1.0, 3.0)):
    torch.manual_seed(0)
    originals = {}
    for b, s in zip(BEHAVIOURS, scale):
        sv = SteeringVector({layer: torch.randn(8) * s for layer in (12, 13)}, behaviour=b, model=MODEL)
        write_caa_dir([sv], root / name)
        originals[b] = sv
    return root / name, originals


def test_caa_vectors_are_imported_and_used(caa_env, tmp_path):
    folder, originals = _caa_folder(tmp_path / "CAA")
    target = import_caa_vectors(folder, MODEL, tmp_path / "run")
    assert target == tmp_path / "run" / "caa_vectors" / "Llama-2-7b-chat-hf"
    for b, sv in originals.items():
        got = load(target / f"{b}.safetensors")
        assert got.normalization is None and got.layers == [12, 13]
        assert torch.equal(got.vectors[13], sv.vectors[13])
    exp = reproduce.get_experiment("ab-7b")
    cfg = experiment_config(exp, tmp_path / "run", behaviours=BEHAVIOURS, vectors_dir=target)
    assert cfg.vectors_folder == target.resolve()
    assert VectorStore(cfg).missing() == []  # nothing to extract: the run steers with CAA's vectors


def test_normalised_or_foreign_caa_folders_are_refused(tmp_path):
    folder, _ = _caa_folder(tmp_path / "CAA", name="normalized_vectors", scale=(1.0, 1.0))
    with pytest.raises(CAAEvalError, match=r"normalised vectors \(or cannot tell\); give its raw vectors/ folder"):
        import_caa_vectors(folder, MODEL, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(CAAEvalError, match=r"no vectors of Llama-2-13b-chat-hf \(found: Llama-2-7b-chat-hf\)"):
        import_caa_vectors(folder, "meta-llama/Llama-2-13b-chat-hf", tmp_path / "run")
    with pytest.raises(CAAEvalError, match="no such folder"):
        import_caa_vectors(tmp_path / "nowhere", MODEL, tmp_path / "run")
