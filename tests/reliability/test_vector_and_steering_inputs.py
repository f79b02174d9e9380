"""Bad vector files and bad steering configs, through `caa-eval`, the Python API and `steered-hf`."""

from __future__ import annotations

import pytest
import torch
from _harness import API, Case, api, check, cli, subprocess_cli

V = "{vec}/"


def _load(name: str):
    def call(env):
        from caa_eval import load_vector

        return load_vector(env.fmt(V + name))

    return call


def _inspect(id: str, name: str, bad: str, expect: str) -> Case:
    return Case(id, "vector file", f"caa-eval inspect {name}", bad, cli("inspect", V + name), expect)


def _api_load(id: str, name: str, bad: str, expect: str, kind: str = "vector file") -> Case:
    return Case(id, kind, f"caa_eval.load_vector('{name}')", bad, api(_load(name)), expect, API)


VECTOR_CASES = [
    _inspect("vec-missing", "missing.safetensors", "a file that does not exist", "vector file not found"),
    _inspect("vec-folder", "folder.safetensors", "a folder named like a vector file", "is a folder, not a vector file"),
    _inspect("vec-empty", "empty.safetensors", "an empty (0-byte) file", "the file is empty"),
    _inspect("vec-text", "text.safetensors", "a text file renamed .safetensors", "not a readable safetensors file"),
    _inspect("vec-suffix", "good.txt", "a valid vector file renamed .txt", "a vector file ends in .safetensors"),
    _inspect("vec-other-type", "results.json", "a results JSON passed as the vector", "not '.json'"),
    _inspect(
        "vec-header-json", "badjson.safetensors", "header `caa_eval` is not valid JSON", "header is not valid JSON"
    ),
    _inspect(
        "vec-header-list",
        "list.safetensors",
        "header `caa_eval` is a list, not an object",
        "is a JSON list, not an object",
    ),
    _inspect(
        "vec-header-missing",
        "nohdr.safetensors",
        "plain safetensors without the caa-eval header",
        "no caa-eval metadata",
    ),
    _inspect("vec-key-abc", "abc.safetensors", "tensor key `layer.abc`", "tensor 'layer.abc' is not named 'layer.<n>'"),
    _inspect("vec-key-negative", "neg.safetensors", "tensor key `layer.-1`", "tensor 'layer.-1' is not named"),
    _inspect("vec-key-other", "foo.safetensors", "tensor key `foo`", "tensor 'foo' is not named"),
    _inspect(
        "vec-shape-2d",
        "twod.safetensors",
        "a 2-D tensor [2, 16] (was silently flattened)",
        "has shape [2, 16]; a steering vector is 1-D",
    ),
    _inspect("vec-shape-0d", "scalar.safetensors", "a 0-D scalar tensor", "has shape []"),
    _inspect("vec-shape-empty", "zero.safetensors", "an empty tensor [0]", "has shape [0]"),
    _inspect(
        "vec-dtype-int", "int.safetensors", "an integer tensor", "has dtype int64; steering vectors are floating point"
    ),
    _inspect(
        "vec-hidden-header",
        "hsize.safetensors",
        "header hidden_size 64, tensors of size 32",
        "the header says hidden_size 64 but the vectors have size 32",
    ),
    _inspect(
        "vec-mixed-sizes",
        "mixed.safetensors",
        "layers of different sizes (32 and 16)",
        "different sizes (16 at layer(s) 2, 32 at layer(s) 1)",
    ),
    _inspect("vec-nan", "nan.safetensors", "NaN values", "contains NaN or inf"),
    _inspect(
        "vec-site",
        "site.safetensors",
        "header site `bogus`",
        "site='bogus' not understood; write one of residual, mlp, attn",
    ),
    _inspect(
        "vec-field-type",
        "normstr.safetensors",
        "header normalization is a string",
        "header field 'normalization' is 'yes'",
    ),
    _inspect(
        "vec-layers-mismatch",
        "layersmismatch.safetensors",
        "header lists layer 5, file holds layer 1",
        "the header lists layers [5]",
    ),
    _inspect("vec-no-tensors", "novec.safetensors", "a header and no tensors", "holds no vectors"),
    _inspect("vec-format", "format9.safetensors", "an unknown format version", "is not 'caa-eval/vector-v1'"),
    _api_load(
        "pt-missing-field",
        "pt_missing.pt",
        "lm-eval steered .pt without steering_vector",
        "has no 'steering_vector'",
        "lm-eval .pt file",
    ),
    _api_load(
        "pt-coef-text",
        "pt_coef.pt",
        "steering_coefficient 'big'",
        "steering_coefficient is 'big'; write a finite number",
        "lm-eval .pt file",
    ),
    _api_load(
        "pt-coef-nan", "pt_coefnan.pt", "steering_coefficient nan", "steering_coefficient is nan", "lm-eval .pt file"
    ),
    _api_load(
        "pt-entry-tensor", "pt_entry.pt", "hookpoint maps to a bare tensor", "found a Tensor", "lm-eval .pt file"
    ),
    _api_load("pt-empty", "pt_emptydict.pt", "an empty dict", "found dict (empty)", "lm-eval .pt file"),
    _api_load(
        "pt-hookpoint", "pt_hook.pt", "hookpoint `blocks.1`", "hookpoint 'blocks.1' not understood", "lm-eval .pt file"
    ),
    _api_load("pt-shape-2d", "pt_2d.pt", "steering_vector of shape [2, 16]", "has shape [2, 16]", "lm-eval .pt file"),
    _api_load(
        "pt-vector-list",
        "pt_listvec.pt",
        "steering_vector is a Python list",
        "is a list, not a tensor",
        "lm-eval .pt file",
    ),
    _api_load("pt-pickle", "evil.pt", "a pickle that would run code", "weights_only=True", "lm-eval .pt file"),
    _api_load("pt-garbage", "garbage.pt", "random bytes named .pt", "cannot load safely", "lm-eval .pt file"),
    _api_load(
        "pt-bare-unnamed",
        "bare.pt",
        "a bare tensor without CAA's file name",
        "a bare tensor has no layer",
        "CAA .pt file",
    ),
    _api_load(
        "pt-caa-2d",
        "caa/sycophancy/vec_layer_3_tiny.pt",
        "CAA-named file holding a [2, 3] tensor",
        "has shape [2, 3]",
        "CAA .pt file",
    ),
    Case(
        "normalize-one",
        "vector file",
        "caa-eval normalize ONE --out-dir OUT",
        "one behaviour's file to normalise",
        cli("normalize", V + "good.safetensors", "--out-dir", "{out}/norm"),
        "needs at least two",
    ),
    Case(
        "import-caa-file",
        "vector file",
        "caa-eval import-caa FILE --out-dir OUT",
        "a file instead of CAA's folder",
        cli("import-caa", V + "good.safetensors", "--out-dir", "{out}/imp"),
        "is not a folder",
    ),
]


@pytest.mark.parametrize("case", VECTOR_CASES, ids=lambda c: c.id)
def test_vector_file(case, env, capsys):
    check(case, env)
    if case.id == "pt-pickle":
        assert "pickle code ran" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- steering configs


def _steered(**kwargs):
    """SteeredHFLM(...) on the tiny model; the bad argument must be refused before the model loads."""

    def call(env):
        from caa_eval import SteeredHFLM

        args = {k: env.fmt(v) if isinstance(v, str) else v for k, v in kwargs.items()}
        SteeredHFLM(pretrained="{never-loaded}", **args)  # a bad argument must stop before the model load

    return call


def _set(**kwargs):
    """lm.set_steering(...) on one loaded tiny model; a refused setting must leave the previous one in place."""

    def call(env):
        lm = env.shared.get("lm")
        if lm is None:
            from caa_eval import SteeredHFLM

            lm = env.shared["lm"] = SteeredHFLM(
                pretrained=env.paths["tiny"],
                vector=env.fmt(V + "good.safetensors"),
                layers=1,
                multiplier=2,
                batch_size=2,
                device="cpu",
            )
        before = dict(lm.steering_config)
        args = {k: env.fmt(v) if isinstance(v, str) else (v(env) if callable(v) else v) for k, v in kwargs.items()}
        try:
            lm.set_steering(**args)
        finally:
            assert lm.steering_config == before, "a refused setting changed the steering"

    return call


def _two_d_vector(env):
    from caa_eval import SteeringVector

    return SteeringVector(vectors={1: torch.randn(2, 16)}, behaviour="sycophancy")


GOOD = V + "good.safetensors"
STEERING_CASES = [
    Case(
        "steer-layers-reversed",
        "steering config",
        "SteeredHFLM(layers='14-12')",
        "a reversed layer range",
        api(_steered(vector=GOOD, layers="14-12", multiplier=50)),
        "the range 14-12 runs backwards; write 12-14",
        API,
    ),
    Case(
        "steer-layers-empty",
        "steering config",
        "SteeredHFLM(layers='')",
        "`layers=` with nothing after it",
        api(_steered(vector=GOOD, layers="", multiplier=50)),
        "names no layer",
        API,
    ),
    Case(
        "steer-layers-text",
        "steering config",
        "SteeredHFLM(layers='middle')",
        "a word as the layer",
        api(_steered(vector=GOOD, layers="middle")),
        "not understood; write all, 13, [10,12] or 10-14",
        API,
    ),
    Case(
        "steer-mult-nan",
        "steering config",
        "SteeredHFLM(multiplier='nan')",
        "multiplier=nan",
        api(_steered(vector=GOOD, layers=1, multiplier="nan")),
        "multiplier='nan' is not finite",
        API,
    ),
    Case(
        "steer-mult-inf",
        "steering config",
        "SteeredHFLM(multiplier=inf)",
        "multiplier=inf",
        api(_steered(vector=GOOD, layers=1, multiplier=float("inf"))),
        "is not finite",
        API,
    ),
    Case(
        "steer-mult-text",
        "steering config",
        "SteeredHFLM(multiplier='strong')",
        "a word as the multiplier",
        api(_steered(vector=GOOD, layers=1, multiplier="strong")),
        "multiplier='strong' is not a number",
        API,
    ),
    Case(
        "steer-mult-no-vector",
        "steering config",
        "SteeredHFLM(multiplier=2)",
        "a multiplier without a vector",
        api(_steered(multiplier=2)),
        "multiplier=+2 needs a vector",
        API,
    ),
    Case(
        "steer-vector-empty",
        "steering config",
        "SteeredHFLM(vector='')",
        "`vector=` with nothing after it",
        api(_steered(vector="", multiplier=1)),
        "vector= is empty",
        API,
    ),
    Case(
        "steer-vector-missing",
        "steering config",
        "SteeredHFLM(vector='missing.safetensors')",
        "a vector file that does not exist",
        api(_steered(vector=V + "missing.safetensors", layers=1)),
        "vector file not found",
        API,
    ),
    Case(
        "steer-site",
        "steering config",
        "SteeredHFLM(site='resid')",
        "an unknown site",
        api(_steered(vector=GOOD, layers=1, site="resid")),
        "site='resid' not understood; write one of residual, mlp, attn",
        API,
    ),
    Case(
        "steer-positions",
        "steering config",
        "SteeredHFLM(positions='middle')",
        "an unknown position rule",
        api(_steered(vector=GOOD, layers=1, positions="middle")),
        "positions='middle' not understood",
        API,
    ),
    Case(
        "steer-typo",
        "steering config",
        "SteeredHFLM(multipler=2)",
        "a misspelt argument",
        api(_steered(vector=GOOD, multipler=2)),
        "did you mean 'multiplier'?",
        API,
    ),
    Case(
        "steer-bool",
        "steering config",
        "SteeredHFLM(allow_fingerprint_mismatch='maybe')",
        "a non-boolean flag",
        api(_steered(vector=GOOD, layers=1, allow_fingerprint_mismatch="maybe")),
        "write allow_fingerprint_mismatch=true",
        API,
    ),
    Case(
        "steer-layer-range",
        "steering config",
        "lm.set_steering(layers=9)",
        "layer 9 on a 4-layer model",
        api(_set(vector=GOOD, layers=9, multiplier=1)),
        "layers [9] out of range; the model has layers 0..3",
        API,
    ),
    Case(
        "steer-hidden",
        "steering config",
        "lm.set_steering(vector=<16-d file>)",
        "a vector of another model's hidden size",
        api(_set(vector=V + "small.safetensors", layers=1)),
        "the model's hidden size is 32",
        API,
    ),
    Case(
        "steer-choose-layer",
        "steering config",
        "lm.set_steering(vector=<2 layers>)",
        "a 2-layer file without layers=",
        api(_set(vector=GOOD, multiplier=1)),
        "choose with layers=13 or layers=[12,13]",
        API,
    ),
    Case(
        "steer-layer-absent",
        "steering config",
        "lm.set_steering(layers=3)",
        "a layer the file has no vector for",
        api(_set(vector=GOOD, layers=3)),
        "has no vector for layer(s) [3]",
        API,
    ),
    Case(
        "steer-fingerprint",
        "steering config",
        "lm.set_steering(vector=<other model>)",
        "a vector read from other weights",
        api(_set(vector=V + "fingerprint.safetensors", layers=1)),
        "pass allow_fingerprint_mismatch=true",
        API,
    ),
    Case(
        "steer-2d-object",
        "steering config",
        "lm.set_steering(vector=SteeringVector(2-D))",
        "an in-memory vector of shape [2, 16]",
        api(_set(vector=_two_d_vector, layers=1)),
        "has shape [2, 16]",
        API,
    ),
    Case(
        "lm-eval-layers-list",
        "steering config",
        "lm_eval --model_args …,layers=3,14",
        "a layer list without brackets",
        subprocess_cli(
            "lm_eval",
            "--model",
            "steered-hf",
            "--model_args",
            "pretrained={tiny},vector={vec}/good.safetensors,layers=3,14",
            "--tasks",
            "caa_ab_sycophancy",
            "--output_path",
            "{out}/lm",
        ),
        "a list needs brackets: write layers=[3,14]",
    ),
    Case(
        "lm-eval-mult-nan",
        "steering config",
        "lm_eval --model_args …,multiplier=nan",
        "multiplier=nan (was: NaN results, exit 0)",
        subprocess_cli(
            "lm_eval",
            "--model",
            "steered-hf",
            "--model_args",
            "pretrained={tiny},vector={vec}/good.safetensors,layers=1,multiplier=nan",
            "--tasks",
            "caa_demo_optimism",
            "--limit",
            "1",
            "--output_path",
            "{out}/lm",
        ),
        "caa-eval: error: multiplier=nan is not finite",
    ),
    Case(
        "eval-layers-reversed",
        "steering config",
        "caa-eval eval --model_args …,layers=14-12",
        "a reversed range (was: no hooks, exit 0)",
        cli(
            "eval",
            "--model",
            "steered-hf",
            "--model_args",
            "pretrained={tiny},vector={vec}/good.safetensors,layers=14-12,multiplier=50",
            "--tasks",
            "caa_demo_optimism",
            "--limit",
            "1",
            "--output_path",
            "{out}/lm",
        ),
        "caa-eval eval: error: layers='14-12': the range 14-12 runs backwards",
    ),
]


@pytest.mark.parametrize("case", STEERING_CASES, ids=lambda c: c.id)
def test_steering_config(case, env):
    check(case, env)
