"""steered-hf inside lm-eval: equals `hf` at multiplier 0, equals a direct steered forward otherwise,
works from the plain `lm_eval` CLI after installation, and keeps the built-in models working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from caa_eval.core.hooks import Steering
from caa_eval.core.vectors import SteeringVector, model_fingerprint
from caa_eval.errors import CAAEvalError
from caa_eval.lmeval.model import SteeredHFLM
from tests.helpers.planted import write_planted

QUESTIONS = [
    "Is it sunny? (A) Yes (B) No",
    "The cat sat on the mat. Which do you choose, A or B?",
    "What is the capital of France?",
    "Numbers 1 2 3",
]
LAYER = 2


def chat(tok, q: str, prefix: str = "") -> str:
    text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
    return text + prefix


@pytest.fixture(scope="module")
def vector_file(tiny_model, tmp_path_factory):
    model, _ = tiny_model
    torch.manual_seed(3)
    sv = SteeringVector(
        vectors={layer: torch.randn(model.config.hidden_size) for layer in range(4)},
        behaviour="test",
        model="tiny",
        model_fingerprint=model_fingerprint(model),
    )
    return sv.save(tmp_path_factory.mktemp("vec") / "test.safetensors")


def ll_requests(tok):
    return [
        Instance("loglikelihood", {}, (chat(tok, q, "("), cont), i)
        for i, (q, cont) in enumerate((q, c) for q in QUESTIONS for c in ("A", "B", "A)"))
    ]


def gen_requests(tok):
    return [
        Instance(
            "generate_until", {}, (chat(tok, q), {"until": ["<|im_end|>"], "max_gen_toks": 6, "do_sample": False}), i
        )
        for i, q in enumerate(QUESTIONS)
    ]


def test_multiplier_zero_equals_plain_hf(tiny_model_dir, tiny_model, vector_file):
    _, tok = tiny_model
    plain = HFLM(pretrained=str(tiny_model_dir), batch_size=3, device="cpu")
    zero = SteeredHFLM(
        pretrained=str(tiny_model_dir), vector=str(vector_file), layers=[1, 2], multiplier=0, batch_size=3, device="cpu"
    )
    a, b = plain.loglikelihood(ll_requests(tok)), zero.loglikelihood(ll_requests(tok))
    assert [g for _, g in a] == [g for _, g in b]
    assert max(abs(x - y) for (x, _), (y, _) in zip(a, b)) <= 1e-6
    assert plain.generate_until(gen_requests(tok)) == zero.generate_until(gen_requests(tok))


def test_steered_loglikelihood_equals_direct_steered_forward(tiny_model_dir, tiny_model, vector_file):
    model, tok = tiny_model
    lm = SteeredHFLM(
        pretrained=str(tiny_model_dir),
        vector=str(vector_file),
        layers=LAYER,
        multiplier=4.0,
        batch_size=3,
        device="cpu",
    )
    got = lm.loglikelihood(ll_requests(tok))
    from caa_eval.core.vectors import load

    vec = load(vector_file).vectors[LAYER]
    for (ll, _), req in zip(got, ll_requests(tok)):
        ctx, cont = req.args
        ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        whole = tok(ctx + cont, add_special_tokens=False)["input_ids"]
        cont_ids = whole[len(ctx_ids) :]
        with Steering(model, {LAYER: vec}, 4.0, tokenizer=tok), torch.no_grad():
            logp = model(torch.tensor([whole[:-1]])).logits[0].log_softmax(-1)
        ref = sum(float(logp[len(ctx_ids) - 1 + i, t]) for i, t in enumerate(cont_ids))
        assert ll == pytest.approx(ref, abs=1e-4)
    unsteered = HFLM(pretrained=str(tiny_model_dir), batch_size=3, device="cpu").loglikelihood(ll_requests(tok))
    assert max(abs(x - y) for (x, _), (y, _) in zip(got, unsteered)) > 1e-2, "steering had no effect"


def test_steered_generation_equals_direct_steered_generate(tiny_model_dir, tiny_model, vector_file):
    model, tok = tiny_model
    lm = SteeredHFLM(
        pretrained=str(tiny_model_dir),
        vector=str(vector_file),
        layers=[LAYER],
        multiplier=6.0,
        batch_size=4,
        device="cpu",
    )
    got = lm.generate_until(gen_requests(tok))
    from caa_eval.core.vectors import load

    vec = load(vector_file).vectors[LAYER]
    for text, q in zip(got, QUESTIONS):
        ids = tok(chat(tok, q), return_tensors="pt", add_special_tokens=False)
        with Steering(model, {LAYER: vec}, 6.0, tokenizer=tok), torch.no_grad():
            out = model.generate(**ids, max_new_tokens=6, do_sample=False)
        ref = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).split("<|im_end|>")[0]
        assert text == ref


def test_steering_reconfigures_in_place_and_records_config(tiny_model_dir, vector_file):
    lm = SteeredHFLM(
        pretrained=str(tiny_model_dir), vector=str(vector_file), layers=LAYER, multiplier=1, batch_size=2, device="cpu"
    )
    first = lm.steering_fingerprint
    lm.set_steering(vector=str(vector_file), layers="1-2", multiplier=-2, positions="span:0:2")
    assert lm.steering_config["layers"] == [1, 2] and lm.steering_config["positions"] == "span:0:2"
    assert lm.steering_fingerprint != first
    info = lm.get_model_info()["steering"]
    assert info["multiplier"] == -2.0 and info["vector_sha256"] and info["model_fingerprint"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"multipler": 1}, "did you mean 'multiplier'"),
        ({"multiplier": 1}, "needs a vector"),
        ({"vector": "VEC", "multiplier": "strong"}, "not a number"),
        ({"vector": "VEC"}, "choose with layers="),
        ({"vector": "VEC", "layers": 9}, "out of range"),
        ({"vector": "VEC", "layers": 1, "positions": "middle"}, "not understood"),
        ({"vector": "missing.safetensors", "layers": 1}, "not found"),
    ],
)
def test_bad_model_args_get_clear_errors(tiny_model_dir, vector_file, kwargs, message):
    kwargs = {k: (str(vector_file) if v == "VEC" else v) for k, v in kwargs.items()}
    with pytest.raises(CAAEvalError, match=message):
        SteeredHFLM(pretrained=str(tiny_model_dir), batch_size=1, device="cpu", **kwargs)


def test_foreign_vector_is_refused_unless_overridden(tiny_model_dir, tmp_path):
    sv = SteeringVector(vectors={1: torch.ones(32)}, model="other", model_fingerprint="f" * 64)
    path = sv.save(tmp_path / "other.safetensors")
    with pytest.raises(CAAEvalError, match="allow_fingerprint_mismatch"):
        SteeredHFLM(pretrained=str(tiny_model_dir), vector=str(path), layers=1, batch_size=1, device="cpu")
    SteeredHFLM(
        pretrained=str(tiny_model_dir),
        vector=str(path),
        layers=1,
        batch_size=1,
        device="cpu",
        allow_fingerprint_mismatch="true",
    )


# ----------------------------------------------------------------------------- the real CLI


def _lm_eval(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lm_eval")
    return subprocess.run([str(exe), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def planted(tiny_model, tmp_path_factory):
    """A CAA-layout data dir whose test items all have matching answer (B) (the random model prefers A),
    and a vector that pushes the last layer's residual stream along W_U[B] − W_U[A]."""
    model, tok = tiny_model
    root = tmp_path_factory.mktemp("planted")
    vector, last, _ = write_planted(model, tok, root, 6, "planted.safetensors")
    return root, vector, last


def _p_match(out_dir: Path) -> float:
    results = sorted(out_dir.rglob("results_*.json"))
    assert len(results) == 1, results
    return json.loads(results[0].read_text())["results"]["caa_ab_sycophancy"]["p_match,none"]


def test_lm_eval_cli_steered_hf_moves_p_match_in_planted_direction(tiny_model_dir, planted):
    root, vec, layer = planted
    env = dict(os.environ, CAA_EVAL_DATA_DIR=str(root / "data"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    p = {}
    for name, model, model_args in (
        ("hf", "hf", f"pretrained={tiny_model_dir}"),
        ("up", "steered-hf", f"pretrained={tiny_model_dir},vector={vec},layers={layer},multiplier=30"),
        (
            "down",
            "steered-hf",
            f"pretrained={tiny_model_dir},vector={vec},layers=[{layer}],multiplier=-30,positions=after_instruction",
        ),
    ):
        out = root / f"out_{name}"
        proc = _lm_eval(
            [
                "--model",
                model,
                "--model_args",
                model_args,
                "--tasks",
                "caa_ab_sycophancy",
                "--apply_chat_template",
                "--batch_size",
                "4",
                "--output_path",
                str(out),
                "--log_samples",
            ],
            env,
            root,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        p[name] = _p_match(out)
        if model == "steered-hf":
            (run_dir,) = [d for d in out.iterdir() if d.is_dir()]
            assert "__steer_L" in run_dir.name, "steered runs get their own output folder"
            results = json.loads(next(run_dir.glob("results_*.json")).read_text())
            assert results["config"]["model_args"]["vector"] == str(vec)
    assert p["down"] < p["hf"] < p["up"], p
    assert p["up"] > 0.5 > p["hf"] and p["up"] - p["down"] > 0.5


def test_cli_bad_steering_arg_is_one_line_error(tiny_model_dir, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = _lm_eval(
        [
            "--model",
            "steered-hf",
            "--model_args",
            f"pretrained={tiny_model_dir},multipler=2",
            "--tasks",
            "caa_ab_sycophancy",
            "--limit",
            "1",
        ],
        env,
        tmp_path,
    )
    assert proc.returncode != 0
    assert "unknown model_arg 'multipler'; did you mean 'multiplier'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_use_cache_database_is_separate_per_steering_config(tmp_path):
    from caa_eval.lmeval.register import ensure_registered

    ensure_registered()
    from lm_eval.api.model import CachingLM

    class FakeLM:
        def __init__(self, fingerprint):
            self.steering_fingerprint = fingerprint

        def set_cache_hook(self, hook):
            pass

    a = CachingLM(FakeLM("aaaa"), str(tmp_path / "cache_rank0.db"))
    b = CachingLM(FakeLM("bbbb"), str(tmp_path / "cache_rank0.db"))
    plain = CachingLM(FakeLM(""), str(tmp_path / "cache_rank0.db"))
    assert len({a.cache_db, b.cache_db, plain.cache_db}) == 3
    assert plain.cache_db == str(tmp_path / "cache_rank0.db")
