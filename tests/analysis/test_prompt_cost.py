"""A system prompt's cost, measured like a vector's: KL(prompted [+ steered] ‖ plain) of the next-token
distribution on neutral prompts is 0 without a prompt and equals an independent batch-1 computation otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import rel_entr

from caa_eval.analysis.calibrate import ScaleProbe
from caa_eval.core.prompt_cost import prompt_kl, prompt_scale

LAYER = 1
PROMPTS = ["How long should an egg boil?", "Why is the sky blue on a clear day?", "Name a grey kitten."]
SYSTEM = "You always answer in exactly three words."


@pytest.fixture(scope="module")
def probe(tiny_model):
    model, tok = tiny_model
    return ScaleProbe(model, tok, PROMPTS)


@pytest.fixture(scope="module")
def vec(tiny_model):
    torch.manual_seed(3)
    v = torch.randn(tiny_model[0].config.hidden_size)
    return 0.2 * v / v.norm()


def _next_token(model, tok, messages, add=None):
    ids = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(ids, add_special_tokens=False, return_tensors="pt").input_ids
    handle = None
    if add is not None:  # m·v on the block output at the last position (CAA's rule on a prompt without answer)

        def hook(module, args, output):
            h = (output if torch.is_tensor(output) else output[0]).clone()
            h[:, -1] += add
            return h if torch.is_tensor(output) else (h, *output[1:])

        handle = model.model.layers[LAYER].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(ids).logits[0, -1].double().softmax(-1).numpy()
    finally:
        if handle is not None:
            handle.remove()


def independent(model, tok, system, add=None):
    kls = []
    for p in PROMPTS:
        plain = _next_token(model, tok, [{"role": "user", "content": p}])
        msgs = [{"role": "system", "content": system}] if system else []
        kls.append(float(rel_entr(_next_token(model, tok, msgs + [{"role": "user", "content": p}], add), plain).sum()))
    return float(np.mean(kls))


def test_empty_prompt_costs_nothing(probe):
    assert prompt_kl(probe, "") == 0.0 and prompt_kl(probe, None) == 0.0
    assert prompt_scale(probe, {""}, {}, 0.0) == {"system_prompt_kl": 0.0, "total_kl": 0.0}


def test_prompt_kl_equals_an_independent_computation(tiny_model, probe, vec):
    model, tok = tiny_model
    ref = independent(model, tok, SYSTEM)
    assert ref > 1e-4  # the prompt moves the tiny model: the comparison can fail
    assert prompt_kl(probe, SYSTEM) == pytest.approx(ref, rel=1e-4, abs=1e-7)
    # prompt + steering is one setting against the same plain model
    ref_both = independent(model, tok, SYSTEM, add=1.5 * vec)
    steering = {"vectors": {LAYER: vec}, "multiplier": 1.5}
    assert prompt_kl(probe, SYSTEM, **steering) == pytest.approx(ref_both, rel=1e-4, abs=1e-7)
    assert abs(ref_both - ref) > 1e-4
    # without a prompt it is the vector's own KL (ScaleProbe.kl)
    assert prompt_kl(probe, "", **steering) == pytest.approx(probe.kl(vec, LAYER, 1.5)[0], rel=1e-4)
    scale = prompt_scale(probe, {SYSTEM}, steering, 0.123)
    assert scale["system_prompt_kl"] == pytest.approx(ref, rel=1e-4)
    assert scale["total_kl"] == pytest.approx(ref_both, rel=1e-4)
    assert "system_prompt_error" in prompt_scale(probe, {SYSTEM, "Other."}, {}, 0.0)
