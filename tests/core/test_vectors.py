"""Vector files: round trip, self-description, and every validation error."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from caa_eval.core import vectors
from caa_eval.core.vectors import SteeringVector
from caa_eval.errors import CAAEvalError


def make(hidden: int = 8, layers=(1, 2), **kw) -> SteeringVector:
    torch.manual_seed(0)
    return SteeringVector(
        vectors={layer: torch.randn(hidden) for layer in layers},
        behaviour="sycophancy",
        model="tiny",
        model_fingerprint="abc123",
        n_pairs=7,
        dataset_sha256="d" * 64,
        **kw,
    )


def test_round_trip_keeps_values_and_metadata(tmp_path):
    sv = make()
    path = sv.save(tmp_path / "v.safetensors")
    back = vectors.load(path)
    assert back.layers == [1, 2] and back.hidden_size == 8 and back.site == "residual"
    for layer in back.layers:
        assert torch.equal(back.vectors[layer], sv.vectors[layer])
    meta = back.metadata()
    for key in (
        "behaviour",
        "model",
        "model_fingerprint",
        "layers",
        "site",
        "hidden_size",
        "dtype",
        "read_position",
        "n_pairs",
        "dataset_sha256",
        "aggregation",
        "normalization",
        "caa_eval_version",
    ):
        assert key in meta
    assert meta["behaviour"] == "sycophancy" and meta["n_pairs"] == 7 and meta["dtype"] == "float32"
    assert back.sha256() == sv.sha256()
    assert not list(tmp_path.glob("*.tmp")), "atomic save leaves no temp file"


def test_header_is_plain_json_readable_by_any_safetensors_reader(tmp_path):
    path = make().save(tmp_path / "v.safetensors")
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert json.loads(header["__metadata__"]["caa_eval"])["format"] == vectors.FORMAT
    assert set(k for k in header if k != "__metadata__") == {"layer.1", "layer.2"}


def test_validation_errors(tmp_path):
    sv = make()
    with pytest.raises(CAAEvalError, match="hidden size is 16"):
        vectors.validate_for_model(sv, 16, "abc123", [1], 4)
    with pytest.raises(CAAEvalError, match=r"no vector for layer\(s\) \[3\]"):
        vectors.validate_for_model(sv, 8, "abc123", [3], 4)
    with pytest.raises(CAAEvalError, match="out of range"):
        vectors.validate_for_model(sv, 8, "abc123", [9], 4)
    with pytest.raises(CAAEvalError, match="allow_fingerprint_mismatch"):
        vectors.validate_for_model(sv, 8, "zzz", [1], 4)
    vectors.validate_for_model(sv, 8, "zzz", [1], 4, allow_fingerprint_mismatch=True)  # explicit override
    vectors.validate_for_model(sv, 8, "abc123", [1, 2], 4)


def test_non_finite_vectors_are_rejected(tmp_path):
    bad = make()
    bad.vectors[2][3] = float("nan")
    with pytest.raises(CAAEvalError, match="NaN or inf"):
        bad.save(tmp_path / "bad.safetensors")
    # a file written by another tool with inf inside
    meta = {"format": "pt", "caa_eval": json.dumps({"site": "residual", "hidden_size": 4})}
    save_file(
        {"layer.0": torch.tensor([1.0, float("inf"), 0.0, 0.0])}, str(tmp_path / "inf.safetensors"), metadata=meta
    )
    with pytest.raises(CAAEvalError, match="NaN or inf"):
        vectors.load(tmp_path / "inf.safetensors")


def test_foreign_or_missing_files(tmp_path):
    with pytest.raises(CAAEvalError, match="not found"):
        vectors.load(tmp_path / "nope.safetensors")
    save_file({"layer.0": torch.zeros(4)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CAAEvalError, match="no caa-eval metadata"):
        vectors.load(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CAAEvalError, match="not a readable safetensors"):
        vectors.load(tmp_path / "junk.safetensors")


def test_lm_eval_steered_pt_format_is_read_safely(tmp_path):
    v = torch.arange(4, dtype=torch.float32)
    torch.save(
        {
            "layers.3": {
                "steering_vector": v[None],
                "steering_coefficient": 2.0,
                "action": "add",
                "bias": None,
                "head_index": None,
            }
        },
        tmp_path / "s.pt",
    )
    sv = vectors.load(tmp_path / "s.pt")
    assert sv.layers == [3] and sv.site == "residual" and torch.equal(sv.vectors[3], 2 * v)
    torch.save({"layers.1.mlp": {"steering_vector": v}}, tmp_path / "m.pt")
    assert vectors.load(tmp_path / "m.pt").site == "mlp"
    torch.save({"layers.1": {"steering_vector": v, "action": "clamp"}}, tmp_path / "c.pt")
    with pytest.raises(CAAEvalError, match="only action 'add'"):
        vectors.load(tmp_path / "c.pt")


class Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickled_objects_are_never_executed(tmp_path, capsys):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"layers.1": {"steering_vector": Evil()}}, f)
    with pytest.raises(CAAEvalError, match="weights_only=True"):
        vectors.load(tmp_path / "evil.pt")
    assert "pickle code ran" not in capsys.readouterr().out


def test_normalize_to_mean_norm_matches_caa_rule():
    a = SteeringVector(vectors={0: torch.tensor([3.0, 4.0]), 1: torch.tensor([1.0, 0.0])}, behaviour="a")
    b = SteeringVector(vectors={0: torch.tensor([0.0, 1.0]), 1: torch.tensor([0.0, 3.0])}, behaviour="b")
    na, nb = vectors.normalize_to_mean_norm([a, b])
    for layer, mean in ((0, 3.0), (1, 2.0)):  # mean of norms (5,1) and (1,3)
        assert na.vectors[layer].norm().item() == pytest.approx(mean)
        assert nb.vectors[layer].norm().item() == pytest.approx(mean)
        # direction unchanged
        assert torch.allclose(na.vectors[layer] / na.vectors[layer].norm(), a.vectors[layer] / a.vectors[layer].norm())
    assert na.normalization["method"] == "caa_mean_norm"
    with pytest.raises(CAAEvalError, match="at least two"):
        vectors.normalize_to_mean_norm([a])


def test_normalize_cli_writes_files(tmp_path):
    from caa_eval.cli import main

    paths = []
    for name, scale in (("a", 1.0), ("b", 3.0)):
        sv = make()
        sv.behaviour = name
        sv.vectors = {k: v * scale for k, v in sv.vectors.items()}
        paths.append(str(sv.save(tmp_path / f"{name}.safetensors")))
    assert main(["normalize", *paths, "--out-dir", str(tmp_path / "norm")]) == 0
    na, nb = vectors.load(tmp_path / "norm/a.safetensors"), vectors.load(tmp_path / "norm/b.safetensors")
    assert na.vectors[1].norm().item() == pytest.approx(nb.vectors[1].norm().item())
    assert main(["normalize", *paths, "--out-dir", str(tmp_path)]) == 2  # refuses to overwrite inputs


def test_model_fingerprint_ignores_dtype_but_not_weights(tiny_model):
    model, _ = tiny_model
    fp = vectors.model_fingerprint(model)
    import copy

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    assert vectors.model_fingerprint(bf16) == fp
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(0.5)
    assert vectors.model_fingerprint(other) != fp
