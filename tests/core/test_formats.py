"""Foreign vector formats: llama.cpp GGUF, repeng, lm-eval steered .pt and CAA's layout, read back exactly,
checked with each format's own reader (gguf's GGUFReader, torch.load(weights_only=True)), not ours."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from caa_eval.cli import main
from caa_eval.core import vectors
from caa_eval.core.formats import convert
from caa_eval.core.vectors import SteeringVector
from caa_eval.errors import CAAEvalError

KEPT = ("behaviour", "model", "model_fingerprint", "site", "read_position", "n_pairs", "dataset_sha256")


@pytest.fixture()
def tiny_vector(tiny_model_dir) -> SteeringVector:
    """Vectors of the tiny fixture's hidden size (32) at layers 0, 1 and 3; model = the fixture's folder."""
    g = torch.Generator().manual_seed(1)
    return SteeringVector(
        vectors={layer: torch.randn(32, generator=g) for layer in (0, 1, 3)},
        behaviour="sycophancy",
        model=str(tiny_model_dir),
        model_fingerprint="f" * 64,
        n_pairs=11,
        dataset_sha256="d" * 64,
        normalization={"method": "caa_mean_norm", "mean_norm": {"1": 2.5}},
        extra={"note": "kept"},
    )


@pytest.mark.parametrize(("target", "name"), [("gguf", "v.gguf"), ("repeng", "v.gguf"), ("lm-eval", "v.pt")])
def test_round_trip_keeps_values_and_metadata(tmp_path, tiny_vector, target, name):
    (path,), warnings = convert(tiny_vector, target, tmp_path / name)
    back = vectors.load(path)
    expected_layers = [1, 3] if target == "gguf" else [0, 1, 3]  # llama.cpp cannot steer block 0
    assert back.layers == expected_layers
    assert warnings == (
        ["layer 0 left out: llama.cpp refuses direction.0 (block 0's output cannot be steered there)"]
        if target == "gguf"
        else []
    )
    for layer in expected_layers:
        assert torch.equal(back.vectors[layer], tiny_vector.vectors[layer])
    for key in KEPT:
        assert getattr(back, key) == getattr(tiny_vector, key), key
    assert back.normalization == tiny_vector.normalization and back.extra == tiny_vector.extra


def test_caa_layout_round_trip_and_lost_metadata(tmp_path, tiny_vector):
    written, warnings = convert(tiny_vector, "caa", tmp_path / "vectors", model_hint="tiny-llama")
    names = sorted(p.relative_to(tmp_path).as_posix() for p in written)
    assert names == [f"vectors/sycophancy/vec_layer_{n}_tiny-llama.pt" for n in (0, 1, 3)]
    for path, layer in zip(sorted(written), (0, 1, 3)):
        raw = torch.load(path, weights_only=True)  # CAA's own format: a bare tensor
        assert torch.equal(raw, tiny_vector.vectors[layer])
        back = vectors.load(path)
        assert back.layers == [layer] and back.behaviour == "sycophancy" and back.model == "tiny-llama"
    assert warnings == [
        "CAA's .pt layout cannot carry: model_fingerprint, n_pairs, dataset_sha256, normalization, extra"
    ]


def test_gguf_holds_what_llama_cpp_reads(tmp_path, tiny_vector):
    (path,), _ = convert(tiny_vector, "gguf", tmp_path / "v.gguf", multiplier=2.0)
    reader = gguf.GGUFReader(path)
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"  # the tiny model's config model_type
    count = reader.get_field("controlvector.layer_count")
    assert count.types == [gguf.GGUFValueType.INT32] and count.contents() == 2
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == ["direction.1", "direction.3"]
    for layer in (1, 3):  # direction.N is caa-eval layer N (docs/vectors.md), scaled by the multiplier
        t = tensors[f"direction.{layer}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [32]
        np.testing.assert_array_equal(np.asarray(t.data), 2.0 * tiny_vector.vectors[layer].numpy())
    meta = json.loads(reader.get_field("caa_eval.metadata").contents())
    assert meta["layers"] == [1, 3] and meta["extra"]["multiplier_applied"] == 2.0


def test_gguf_refuses_layer_zero_alone_and_non_residual_sites(tmp_path, tiny_vector):
    only_zero = SteeringVector(vectors={0: tiny_vector.vectors[0]})
    with pytest.raises(CAAEvalError, match="llama.cpp refuses direction.0"):
        convert(only_zero, "gguf", tmp_path / "z.gguf")
    mlp = SteeringVector(vectors={1: tiny_vector.vectors[1]}, site="mlp")
    with pytest.raises(CAAEvalError, match="site 'mlp'"):
        convert(mlp, "repeng", tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())


def test_repeng_gguf_follows_repeng_export(tmp_path, tiny_vector):
    (path,), _ = convert(tiny_vector, "repeng", tmp_path / "r.gguf", model_hint="llama")
    reader = gguf.GGUFReader(path)
    count = reader.get_field("controlvector.layer_count")
    assert count.types == [gguf.GGUFValueType.UINT32] and count.contents() == 3
    assert sorted(t.name for t in reader.tensors) == ["direction.0", "direction.1", "direction.3"]
    d0 = next(t for t in reader.tensors if t.name == "direction.0")
    np.testing.assert_array_equal(np.asarray(d0.data), tiny_vector.vectors[0].numpy())


def test_lm_eval_pt_loads_weights_only_with_hookpoints(tmp_path, tiny_vector):
    (path,), _ = convert(tiny_vector, "lm-eval", tmp_path / "s.pt", multiplier=-1.5)
    config = torch.load(path, weights_only=True)
    assert sorted(config) == ["layers.0", "layers.1", "layers.3"]
    entry = config["layers.1"]
    assert entry["action"] == "add" and entry["bias"] is None and entry["head_index"] is None
    assert entry["steering_coefficient"] == -1.5 and torch.equal(entry["steering_vector"], tiny_vector.vectors[1])
    # read back: what lm-eval adds (vector x coefficient) is what steered-hf adds at multiplier 1
    assert torch.equal(vectors.load(path).vectors[1], -1.5 * tiny_vector.vectors[1])
    mlp = SteeringVector(vectors={2: tiny_vector.vectors[1]}, site="attn")
    (path,), _ = convert(mlp, "lm-eval", tmp_path / "a.pt")
    assert list(torch.load(path, weights_only=True)) == ["layers.2.self_attn"]
    assert vectors.load(path).site == "attn"


def test_format_is_told_from_the_content(tmp_path, tiny_vector):
    (gguf_file,), _ = convert(tiny_vector, "repeng", tmp_path / "r.gguf")
    disguised = tmp_path / "actually_gguf.pt"
    disguised.write_bytes(gguf_file.read_bytes())
    assert vectors.load(disguised).layers == [0, 1, 3]
    st = tiny_vector.save(tmp_path / "v.safetensors")
    (tmp_path / "actually_safetensors.gguf").write_bytes(st.read_bytes())
    assert vectors.load(tmp_path / "actually_safetensors.gguf").n_pairs == 11


def test_a_model_gguf_is_not_a_control_vector(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "model.gguf", "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CAAEvalError, match="architecture 'llama', not a control vector"):
        vectors.load(tmp_path / "model.gguf")


def test_convert_command(tmp_path, tiny_vector, capsys):
    src = tiny_vector.save(tmp_path / "v.safetensors")
    assert main(["convert", str(src), "--to", "caa", "--out", str(tmp_path / "caa"), "--model-hint", "tiny"]) == 0
    out, err = capsys.readouterr()
    assert "caa-eval convert: warning: CAA's .pt layout cannot carry:" in err and err.count("\n") == 1
    assert "vec_layer_3_tiny.pt" in out and "positions=after_instruction" in out
    # the output name is checked before the input is read: a missing input is not reached
    assert (
        main(["convert", str(tmp_path / "missing.safetensors"), "--to", "lm-eval", "--out", str(tmp_path / "x.gguf")])
        == 2
    )
    assert "--to lm-eval writes a .pt file" in capsys.readouterr().err
