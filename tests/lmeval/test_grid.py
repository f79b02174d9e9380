"""One pass for a grid of steering settings equals separate steered-hf runs (log-likelihoods to 1e-5)."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from caa_eval.core.vectors import SteeringVector, model_fingerprint
from caa_eval.lmeval.model import SteeredHFLM

QUESTIONS = [
    "Is it sunny? (A) Yes (B) No",
    "The cat sat on the mat. Which do you choose, A or B?",
    "What is the capital of France?",
    "Numbers 1 2 3 4 5 6 7 8 9 10, A or B?",
    "Short?",
]


def requests(tok):
    out = []
    for q in QUESTIONS:
        ctx = tok.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": "("}],
            tokenize=False,
            continue_final_message=True,
        )
        for cont in ("A", "B", "A) Yes"):
            out.append(Instance("loglikelihood", {}, (ctx, cont), len(out)))
        # a context ending in the generation prompt's newline: lm-eval moves that whitespace into the
        # continuation, so the first steered token lies inside the scored continuation
        open_ctx = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        out.append(Instance("loglikelihood", {}, (open_ctx, "What a lovely day!"), len(out)))
    return out


@pytest.fixture(scope="module")
def vector_files(tiny_model, tmp_path_factory):
    model, _ = tiny_model
    folder = tmp_path_factory.mktemp("grid-vec")
    files = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        sv = SteeringVector(
            vectors={layer: torch.randn(model.config.hidden_size) for layer in range(4)},
            behaviour=f"b{seed}",
            model="tiny",
            model_fingerprint=model_fingerprint(model),
        )
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
        # 1e-5 relative: summed log-likelihoods of long continuations reach |ll| ~ 100 in this sharp tiny model
        assert max(abs(a - b) / max(1.0, abs(b)) for (a, _), (b, _) in zip(got, separate[i])) <= 1e-5, config
    assert calls["n"] == 1, "the grid should compute every setting in one pass"
    steered = [max(abs(a - b) for (a, _), (b, _) in zip(separate[i], separate[0])) for i in separate]
    assert sum(d > 1e-2 for d in steered) >= len(steered) - 3, "steering had no effect; the test would be vacuous"


def generation_requests(tok, task="open"):
    gen_kwargs = {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}
    return [
        Instance(
            "generate_until",
            {},
            (
                tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True),
                dict(gen_kwargs),
            ),
            i,
            metadata=(task, i, 1),
        )
        for i, q in enumerate(QUESTIONS)
    ]


def test_grid_generation_equals_separate_runs(tiny_model_dir, tiny_model, vector_files, monkeypatch):
    """Greedy text from one shared generate call per batch equals each setting's own steered-hf run, and
    settings planned for another task are not decoded."""
    from lm_eval.models.huggingface import HFLM

    _, tok = tiny_model
    lm = SteeredHFLM(pretrained=str(tiny_model_dir), batch_size=3, device="cpu", multiplier=0)
    cfgs = [{"multiplier": 0} | c for c in configs(vector_files)]
    separate = {}
    for i, config in enumerate(cfgs):
        lm.set_steering(**config)
        separate[i] = lm.generate_until(generation_requests(tok))
    calls = []
    original = HFLM._model_generate
    monkeypatch.setattr(
        HFLM,
        "_model_generate",
        lambda self, context, **kw: (calls.append(context.shape[0]), original(self, context, **kw))[1],
    )
    other = {"vector": vector_files[1], "layers": 2, "multiplier": -6.0}  # planned for another task only
    lm.plan_grid(cfgs + [other], tasks=[["open"]] * len(cfgs) + [["elsewhere"]])
    for i, config in enumerate(cfgs):
        lm.set_steering(**config)
        assert lm.generate_until(generation_requests(tok)) == separate[i], config
    n_batches = -(-len(QUESTIONS) // 3)
    groups = len(
        {
            (
                str(c.get("positions", "after_instruction")),
                c.get("site", "residual"),
                c.get("vector"),
                str(c.get("layers")),
            )
            for c in cfgs
            if c.get("vector") and c["multiplier"] != 0
        }
    )
    assert sum(calls) == n_batches * 3 * len(cfgs) - (len(QUESTIONS) % 3 and (3 - len(QUESTIONS) % 3) * len(cfgs))
    assert len(calls) == n_batches * groups, "one generate call per batch and vector group"
    assert sum(text != separate[0] for text in separate.values()) >= len(cfgs) - 3, "steering changed no text"
    lm.clear_grid()


def test_grid_refuses_rules_that_cannot_share(tiny_model_dir, vector_files):
    lm = SteeredHFLM(pretrained=str(tiny_model_dir), batch_size=4, device="cpu", multiplier=0)
    with pytest.raises(ValueError, match="cannot share"):
        lm.plan_grid([{"vector": vector_files[0], "layers": 2, "multiplier": 1.0, "positions": "span:0:2"}])


def _samples(run_dir):
    """cell id -> task -> [(doc_id, resps)] from every samples file of a sweep folder."""
    import json

    out = {}
    for path in sorted(run_dir.glob("cells/*/samples_*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        task = path.name.split("samples_", 1)[1].rsplit("_", 1)[0]
        out.setdefault(path.parent.name, {})[task] = sorted((r["doc_id"], r["resps"]) for r in rows)
    return out


def test_sweep_with_the_grid_writes_what_separate_runs_write(tmp_path, tiny_model_dir, monkeypatch):
    """The sweep plans a grid per (condition, tasks); its samples equal a sweep whose cells run one by one."""
    from tests.helpers.sweep_data import base_keys, write_caa_layout, write_config

    monkeypatch.setenv("CAA_EVAL_DATA_DIR", str(write_caa_layout(tmp_path / "data")))
    from caa_eval import sweep
    from caa_eval.lmeval.model import SteeredHFLM
    from caa_eval.sweep import grid as sweep_grid

    keys = base_keys(
        tiny_model_dir,
        tmp_path / "grid",
        layers=[2],
        multipliers=[-8, 0, 8],
        normalize=False,
        tasks=["caa_ab_{behaviour}"],
    )
    planned = []
    original = SteeredHFLM.plan_grid
    monkeypatch.setattr(
        SteeredHFLM,
        "plan_grid",
        lambda self, configs, **kw: (planned.append(len(configs)), original(self, configs, **kw))[1],
    )
    sweep.run_sweep(
        sweep.load_config(write_config(tmp_path / "a.yaml", **keys)), progress=False, print_fn=lambda _: None
    )
    assert planned and max(planned) >= 2, "the sweep did not use the grid"
    monkeypatch.setattr(sweep_grid, "plan", lambda lm, cells, conds, vectors=None: lm.clear_grid())
    keys["output"] = str(tmp_path / "separate")
    sweep.run_sweep(
        sweep.load_config(write_config(tmp_path / "b.yaml", **keys)), progress=False, print_fn=lambda _: None
    )
    grid, separate = _samples(tmp_path / "grid"), _samples(tmp_path / "separate")
    assert grid.keys() == separate.keys() and len(grid) >= 3
    for cell in grid:
        for task in grid[cell]:
            for (doc_a, resps_a), (doc_b, resps_b) in zip(grid[cell][task], separate[cell][task]):
                assert doc_a == doc_b
                for (ll_a, greedy_a), (ll_b, greedy_b) in zip([r[0] for r in resps_a], [r[0] for r in resps_b]):
                    assert abs(float(ll_a) - float(ll_b)) <= 1e-5 and greedy_a == greedy_b


def test_planning_a_grid_leaves_the_active_steering_alone(tiny_model_dir, tiny_model, vector_files):
    _, tok = tiny_model
    lm = SteeredHFLM(pretrained=str(tiny_model_dir), batch_size=4, device="cpu", multiplier=0)
    lm.set_steering(vector=vector_files[0], layers=2, multiplier=4.0)
    active = (lm._steering, dict(lm.steering_config), lm.steering_fingerprint, dict(SteeredHFLM.resolved_steering))
    before = lm.loglikelihood(requests(tok))
    lm.plan_grid([{"multiplier": 0}] + [{"vector": vector_files[1], "layers": 1, "multiplier": m} for m in (-4.0, 8.0)])
    assert (lm._steering, lm.steering_config, lm.steering_fingerprint, SteeredHFLM.resolved_steering) == active
    assert lm.loglikelihood(requests(tok)) == before
    lm.set_steering(multiplier=0, vector=None)
    assert lm.loglikelihood(requests(tok)) != before  # the active steering did something: the check can fail
