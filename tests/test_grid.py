"""One pass for a grid of steering settings equals separate steered-hf runs (log-likelihoods to 1e-5)."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from caa_eval.core.vectors import SteeringVector, model_fingerprint
from caa_eval.lmeval.model import SteeredHFLM

QUESTIONS = ["Is it sunny? (A) Yes (B) No", "The cat sat on the mat. Which do you choose, A or B?",
             "What is the capital of France?", "Numbers 1 2 3 4 5 6 7 8 9 10, A or B?", "Short?"]


def requests(tok):
    out = []
    for q in QUESTIONS:
        ctx = tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": "("}],
                                      tokenize=False, continue_final_message=True)
        for cont in ("A", "B", "A) Yes"):
            out.append(Instance("loglikelihood", {}, (ctx, cont), len(out)))
    return out


@pytest.fixture(scope="module")
def vector_files(tiny_model, tmp_path_factory):
    model, _ = tiny_model
    folder = tmp_path_factory.mktemp("grid-vec")
    files = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        sv = SteeringVector(vectors={layer: torch.randn(model.config.hidden_size) for layer in range(4)},
                            behaviour=f"b{seed}", model="tiny", model_fingerprint=model_fingerprint(model))
        files.append(str(sv.save(folder / f"b{seed}.safetensors")))
    return files


def configs(files):
    out = [{}]  # the unsteered baseline
    for file in files:
        for layers in (2, [1, 3]):
            for m in (-4.0, 4.0, 8.0):
                out.append({"vector": file, "layers": layers, "multiplier": m})
    out.append({"vector": files[0], "layers": 2, "multiplier": 3.0, "site": "mlp"})
    out.append({"vector": files[0], "layers": 2, "multiplier": 0.0})
    out.append({"vector": files[1], "layers": 1, "multiplier": 5.0, "positions": "all"})
    return out


def test_grid_equals_separate_runs(tiny_model_dir, tiny_model, vector_files):
    _, tok = tiny_model
    lm = SteeredHFLM(pretrained=str(tiny_model_dir), batch_size=4, device="cpu", multiplier=0)
    separate = {}
    for i, config in enumerate(configs(vector_files)):
        lm.set_steering(**({"multiplier": 0} | config))
        separate[i] = lm.loglikelihood(requests(tok))
    lm.plan_grid([{"multiplier": 0} | c for c in configs(vector_files)])
    calls = {"n": 0}
    compute = lm.grid.compute

    def counted(*args, **kwargs):
        calls["n"] += 1
        return compute(*args, **kwargs)

    lm.grid.compute = counted
    for i, config in enumerate(configs(vector_files)):
        lm.set_steering(**({"multiplier": 0} | config))
        got = lm.loglikelihood(requests(tok))
        assert [g for _, g in got] == [g for _, g in separate[i]], config
        assert max(abs(a - b) for (a, _), (b, _) in zip(got, separate[i])) <= 1e-5, config
    assert calls["n"] == 1, "the grid should compute every setting in one pass"
    steered = [max(abs(a - b) for (a, _), (b, _) in zip(separate[i], separate[0])) for i in separate]
    assert sum(d > 1e-2 for d in steered) >= len(steered) - 3, "steering had no effect; the test would be vacuous"


def test_grid_refuses_rules_that_cannot_share(tiny_model_dir, vector_files):
    lm = SteeredHFLM(pretrained=str(tiny_model_dir), batch_size=4, device="cpu", multiplier=0)
    with pytest.raises(ValueError, match="cannot share"):
        lm.plan_grid([{"vector": vector_files[0], "layers": 2, "multiplier": 1.0, "positions": "span:0:2"}])
