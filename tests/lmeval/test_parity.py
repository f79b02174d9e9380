"""Backends agree: an lm-eval `.pt` written by `caa-eval convert` loads in lm-eval's own `steered` model and gives
steered-hf's log-likelihoods (positions=all), both equal to a plain-torch reference written here; `caa-eval
parity` says `agree`, and `differ` when the converter is off by one layer; llama.cpp when it is installed."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from caa_eval.core.formats import convert, lmeval
from caa_eval.core.vectors import SteeringVector
from caa_eval.lmeval.parity import run_parity

TOL = 1e-5
MULTIPLIER = 1.5
REQUESTS = [
    ("<|im_start|>user\nIs the weather sunny today?<|im_end|>\n<|im_start|>assistant\n(", "A"),
    ("<|im_start|>user\nIs the weather sunny today?<|im_end|>\n<|im_start|>assistant\n(", "B"),
    ("The cat sat on the mat. The dog ran in the", " garden. Birds sing"),
    ("Numbers like 0 1 2 3", " 4 5 6 7 8 9 10 appear"),
]


def _vector(layers: list[int], hidden: int = 32, scale: float = 4.0) -> SteeringVector:
    g = torch.Generator().manual_seed(7)
    return SteeringVector(vectors={layer: scale * torch.randn(hidden, generator=g) for layer in layers}, model="tiny")


def _reference(model, tok, vectors: dict[int, torch.Tensor], multiplier: float) -> list[float]:
    """log p(continuation | context) with multiplier x v added to block L's output at every position (plain torch)."""
    handles = [
        model.model.layers[layer].register_forward_hook(
            lambda _m, _a, out, v=v: (
                (out[0] + multiplier * v, *out[1:]) if isinstance(out, tuple) else out + multiplier * v
            )
        )
        for layer, v in vectors.items()
    ]
    try:
        out = []
        for context, continuation in REQUESTS:
            ctx = tok(context, add_special_tokens=False).input_ids
            whole = tok(context + continuation, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), dim=-1)
            out.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole))))
        return out
    finally:
        for h in handles:
            h.remove()


def _instances() -> list[Instance]:
    return [Instance("loglikelihood", {}, args, idx) for idx, args in enumerate(REQUESTS)]


@pytest.mark.parametrize("layers", [[2], [1, 3]], ids=["one-layer", "several-layers"])
def test_lm_eval_steered_loads_converted_pt_and_matches_steered_hf(tmp_path, tiny_model, tiny_model_dir, layers):
    from lm_eval.models.hf_steered import SteeredModel

    from caa_eval.lmeval.model import SteeredHFLM

    model, tok = tiny_model
    sv = _vector(layers)
    (pt,), _ = convert(sv, "lm-eval", tmp_path / "steer.pt", multiplier=MULTIPLIER)
    lm_eval_steered = SteeredModel(pretrained=str(tiny_model_dir), steer_path=str(pt), device="cpu", batch_size=2)
    theirs = [ll for ll, _ in lm_eval_steered.loglikelihood(_instances(), disable_tqdm=True)]
    hf = SteeredHFLM(
        pretrained=str(tiny_model_dir), vector=sv, layers=layers, multiplier=MULTIPLIER, positions="all",
        device="cpu", batch_size=2,
    )  # fmt: skip
    ours = [ll for ll, _ in hf.loglikelihood(_instances(), disable_tqdm=True)]
    reference = _reference(model, tok, sv.vectors, MULTIPLIER)
    unsteered = _reference(model, tok, sv.vectors, 0.0)
    assert max(abs(a - b) for a, b in zip(reference, unsteered)) > 0.05  # the steering is visible
    assert theirs == pytest.approx(reference, abs=TOL)
    assert ours == pytest.approx(reference, abs=TOL)


@pytest.fixture(scope="module")
def demo_tasks():
    from lm_eval.tasks import TaskManager

    from caa_eval.lmeval.register import ensure_registered
    from caa_eval.paths import tasks_dir

    ensure_registered()
    return TaskManager(include_path=str(tasks_dir()), include_defaults=False)


def _parity(tiny_model_dir, demo_tasks, layers, **kw):
    return run_parity(
        str(tiny_model_dir), _vector(layers), layers, MULTIPLIER, "caa_demo_optimism_ab",
        ["steered-hf", "lm-eval-steered"], limit=3, device="cpu", task_manager=demo_tasks, tolerance=1e-5, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("layers", [[2], [1, 3]], ids=["one-layer", "several-layers"])
def test_parity_agrees_and_an_off_by_one_converter_differs(tiny_model_dir, demo_tasks, monkeypatch, layers):
    report = _parity(tiny_model_dir, demo_tasks, layers)
    assert report.verdict().startswith("agree to ")
    doc = report.to_json()
    assert [item["doc_id"] for item in doc["items"]] == [0, 1, 2] and doc["max_abs_diff"] <= 1e-5
    item = doc["items"][0]
    assert item["answers"] == ["A", "B"] and set(item["metrics"]["lm-eval-steered"]) >= {"p_match", "ab_mass"}
    assert doc["backends"]["steered-hf"]["positions"].startswith("all positions")
    # an off-by-one hookpoint (the classic converter bug) steers the next block: parity must say so
    monkeypatch.setattr(lmeval, "hookpoint", lambda layer, site="residual": f"layers.{layer - 1}")
    shifted = _parity(tiny_model_dir, demo_tasks, layers)
    assert shifted.verdict().startswith("differ: max |Δ log p| ") and " on item " in shifted.verdict()
    assert shifted.worst()[0] > 1e-3


@pytest.mark.slow
def test_llama_cpp_agrees_with_steered_hf_on_the_embedded_model(smollm2_dir, demo_tasks, monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'caa-eval[llamacpp]')")
    from caa_eval.core.formats import gguf as gguf_format

    sv = _vector([15], hidden=576, scale=0.5)

    def parity():
        return run_parity(
            "smollm2-135m-instruct", sv, [15], 4.0, "caa_demo_optimism_ab", ["steered-hf", "llama-cpp"],
            limit=2, device="cpu", task_manager=demo_tasks, tolerance=1e-4,
        )  # fmt: skip

    report = parity()
    assert report.verdict().startswith("agree to "), report.lines()
    # direction.N written one layer late: llama.cpp steers block 16, and parity shows it
    original = gguf_format.write_control_vector

    def shifted(sv, out, hint, multiplier, layer_count_type):
        moved = SteeringVector(vectors={k + 1: v for k, v in sv.vectors.items()}, model=sv.model)
        return original(moved, out, hint, multiplier, layer_count_type)

    monkeypatch.setattr(gguf_format, "write_control_vector", shifted)
    assert parity().verdict().startswith("differ: ")


class _Payload:
    def __reduce__(self):
        return (print, ("lm-eval unpickled the steer file and ran its code",))


def test_known_difference_lm_eval_steered_runs_pickled_code(tmp_path, tiny_model_dir, capsys):
    """lm-eval 0.4.13's `steered` loads `steer_path` with torch.load(weights_only=False) (hf_steered.py:106, the
    weights_only=True call is commented out), so a .pt can run code; caa-eval reads the same file with
    weights_only=True and refuses it. This test fails the day lm-eval stops unpickling (docs/vectors.md)."""
    from lm_eval.models.hf_steered import SteeredModel

    from caa_eval.core import vectors
    from caa_eval.errors import CAAEvalError

    path = tmp_path / "payload.pt"
    torch.save({"layers.1": {"steering_vector": _Payload(), "action": "add"}}, path)
    with pytest.raises(AttributeError):  # print() returned None where the tensor should be
        SteeredModel(pretrained=str(tiny_model_dir), steer_path=str(path), device="cpu")
    assert "lm-eval unpickled the steer file and ran its code" in capsys.readouterr().out
    with pytest.raises(CAAEvalError, match="weights_only=True"):
        vectors.load(path)
    assert "ran its code" not in capsys.readouterr().out


def test_backends_are_checked_before_any_load(monkeypatch):
    from caa_eval.errors import CAAEvalError
    from caa_eval.lmeval import llamacpp
    from caa_eval.lmeval.parity import check_backends

    assert check_backends("steered-hf,lm-eval-steered") == ["steered-hf", "lm-eval-steered"]
    with pytest.raises(CAAEvalError, match="two or more different backends"):
        check_backends("steered-hf")
    with pytest.raises(CAAEvalError, match=r"vllm unknown"):
        check_backends("steered-hf,vllm")
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    with pytest.raises(
        CAAEvalError, match=r"needs llama-cpp-python, which is not installed: pip install 'caa-eval\[llamacpp\]'"
    ):
        check_backends("steered-hf,llama-cpp")
