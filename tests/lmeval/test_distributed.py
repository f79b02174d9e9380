"""Beyond one process, proven on CPU: lm-eval's own accelerate data-parallel path (gloo) gives the same
per-item results as one process, for log-likelihoods and greedy generation; sharded / offloaded /
mixed-precision models get the vector on each hooked module's device and dtype at call time; and
benchmarks/gpu_smoke.sh runs end to end on the embedded model.

CPU-only limits, stated precisely: torch has one CPU device (`cpu:1` is the same device as `cpu`), so a
split of the layers over two *compute* devices cannot be built here. What is tested instead: a
`device_map` with layers (and lm_head) offloaded to disk through accelerate's hooks (their weights sit on
`meta` between forwards), a model whose layers have different dtypes, and activations on a second device
type (`meta`) reaching the steering hook.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from caa_eval.core.hooks import Steering
from caa_eval.core.layers import decoder_layers
from caa_eval.core.vectors import SteeringVector, model_fingerprint
from caa_eval.lmeval.model import SteeredHFLM

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LAYER = 2
MULTIPLIER = 8.0
AB_ITEMS, OPEN_ITEMS, NEW_TOKENS = 24, 8, 12


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(n: int, script_args: list[str], cwd: Path) -> list[str]:
    """accelerate's multi-process launcher (torchrun underneath) on CPU: ACCELERATE_USE_CPU=1 selects gloo."""
    return [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        *script_args,
    ]


@pytest.fixture(scope="module")
def vector_file(tiny_model_dir, tmp_path_factory) -> Path:
    """A random direction, small enough that steered greedy text still varies from item to item."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32")
    torch.manual_seed(5)
    v = torch.randn(model.config.hidden_size)
    v = v / v.norm() * 0.06
    sv = SteeringVector(
        vectors={1: v.clone(), LAYER: v.clone()},
        behaviour="agree",
        model="tiny",
        model_fingerprint=model_fingerprint(model),
    )
    return sv.save(tmp_path_factory.mktemp("vec") / "agree.safetensors")


def _user_tasks(folder: Path) -> Path:
    """A 24-item A/B task and an 8-item open-ended task, as user YAMLs including the shipped templates."""
    folder.mkdir(parents=True)
    items = []
    for k in range(AB_ITEMS):
        m = "AB"[k % 2]
        items.append(
            {
                "question": f"Question {k}: is the sky green on day {k}?\n\nChoices:\n (A) Yes\n (B) No",
                "answer_matching_behavior": f"({m})",
                "answer_not_matching_behavior": f"({'B' if m == 'A' else 'A'})",
            }
        )
    (folder / "agree_test.json").write_text(json.dumps(items), encoding="utf-8")
    (folder / "agree_open.json").write_text(
        json.dumps([{"question": f"Tell me about day {k} and the weather."} for k in range(OPEN_ITEMS)]),
        encoding="utf-8",
    )
    (folder / "agree.yaml").write_text(
        f"include: {REPO / 'tasks/caa_ab/_caa_ab_template_yaml'}\ntask: agree\n"
        "dataset_kwargs:\n  test_file: agree_test.json\n",
        encoding="utf-8",
    )
    (folder / "agree_open.yaml").write_text(
        f"include: {REPO / 'tasks/caa_open/_caa_open_template_yaml'}\ntask: agree_open\n"
        "dataset_kwargs:\n  test_file: agree_open.json\n"
        f"generation_kwargs:\n  until: []\n  do_sample: false\n  max_gen_toks: {NEW_TOKENS}\n",
        encoding="utf-8",
    )
    return folder


def _samples(out: Path, task: str) -> dict[int, dict]:
    (path,) = [p for p in out.rglob(f"samples_{task}_*.jsonl") if p.name.startswith(f"samples_{task}_2")]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["doc_id"]: r for r in rows}


@pytest.fixture(scope="module")
def one_and_two_processes(tiny_model_dir, vector_file, tmp_path_factory):
    """The same steered lm_eval run in one process and data-parallel in two (gloo on CPU)."""
    root = tmp_path_factory.mktemp("dist")
    user = _user_tasks(root / "user")
    lm_eval_args = [
        "--model",
        "steered-hf",
        "--model_args",
        f"pretrained={tiny_model_dir},vector={vector_file},layers={LAYER},multiplier={MULTIPLIER:g}",
        "--include_path",
        str(user),
        "--tasks",
        "agree,agree_open",
        "--apply_chat_template",
        "--batch_size",
        "4",
        "--log_samples",
    ]
    one = subprocess.run(
        [str(BIN / "lm_eval"), *lm_eval_args, "--output_path", str(root / "out1")],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        _launch(2, ["-m", "lm_eval", *lm_eval_args, "--output_path", str(root / "out2")], root),
        cwd=root,
        env=_env(ACCELERATE_USE_CPU="1"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    return root, two.stdout + two.stderr


def test_launcher_flags_on_cpu(tmp_path):
    """What docs/gpu.md says about the launcher: `--cpu --num_processes 2` starts ONE process (accelerate
    launches several CPU processes only through mpirun); torchrun under `--multi_gpu` with
    ACCELERATE_USE_CPU=1 starts two, on gloo."""
    script = tmp_path / "rank.py"
    script.write_text(
        "from accelerate import Accelerator\na = Accelerator()\n"
        "print(f'RANK {a.process_index} OF {a.num_processes} {a.distributed_type.value} ', flush=True)\n"
    )
    cpu_flag = subprocess.run(
        [
            str(BIN / "accelerate"),
            "launch",
            "--cpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(script),
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cpu_flag.returncode == 0, cpu_flag.stderr[-2000:]
    assert sorted(re.findall(r"RANK \d+ OF \d+ \w+", cpu_flag.stdout)) == ["RANK 0 OF 1 NO"]
    gloo = subprocess.run(
        _launch(2, [str(script)], tmp_path),
        cwd=tmp_path,
        env=_env(ACCELERATE_USE_CPU="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert gloo.returncode == 0, gloo.stderr[-2000:]
    assert sorted(re.findall(r"RANK \d+ OF \d+ \w+", gloo.stdout)) == ["RANK 0 OF 2 MULTI_CPU", "RANK 1 OF 2 MULTI_CPU"]


def test_two_processes_split_the_requests_and_write_one_result(one_and_two_processes):
    root, log = one_and_two_processes
    for rank in (0, 1):  # lm-eval builds each rank's share of the docs; without steered-hf's rank fix both are rank 0
        assert f"Building contexts for agree on rank {rank}" in log
        assert f"Building contexts for agree_open on rank {rank}" in log
    assert len(list((root / "out2").rglob("results_*.json"))) == 1
    results = json.loads(next((root / "out2").rglob("results_*.json")).read_text())
    assert results["config"]["model_args"]["multiplier"] == MULTIPLIER


def test_two_processes_equal_one_for_loglikelihood(one_and_two_processes, tiny_model_dir):
    root, _ = one_and_two_processes
    one, two = _samples(root / "out1", "agree"), _samples(root / "out2", "agree")
    assert sorted(one) == sorted(two) == list(range(AB_ITEMS))
    for k in one:
        a = [float(x[0][0]) for x in one[k]["resps"]]
        b = [float(x[0][0]) for x in two[k]["resps"]]
        assert a == pytest.approx(b, abs=1e-5), k
        assert one[k]["p_match"] == pytest.approx(two[k]["p_match"], abs=1e-6)
    # the runs were steered: an unsteered model gives other log-likelihoods for the very same requests
    plain = HFLM(pretrained=str(tiny_model_dir), batch_size=4, device="cpu")
    requests = [
        Instance("loglikelihood", {}, (one[k]["arguments"][g]["arg_0"], one[k]["arguments"][g]["arg_1"]), 0)
        for k in sorted(one)
        for g in sorted(one[k]["arguments"])
    ]
    unsteered = [ll for ll, _ in plain.loglikelihood(requests)]
    steered = [float(x[0][0]) for k in sorted(one) for x in one[k]["resps"]]
    assert max(abs(s - u) for s, u in zip(steered, unsteered)) > 0.1


def test_two_processes_equal_one_for_greedy_generation(one_and_two_processes, tiny_model_dir):
    root, _ = one_and_two_processes
    one, two = _samples(root / "out1", "agree_open"), _samples(root / "out2", "agree_open")
    assert sorted(one) == sorted(two) == list(range(OPEN_ITEMS))
    texts = {k: one[k]["resps"][0][0] for k in one}
    assert texts == {k: two[k]["resps"][0][0] for k in two}
    assert len(set(texts.values())) > 1, "steered text is the same for every item: the test would prove little"
    plain = HFLM(pretrained=str(tiny_model_dir), batch_size=4, device="cpu")
    requests = [
        Instance(
            "generate_until",
            {},
            (one[k]["arguments"]["gen_args_0"]["arg_0"], {"until": [], "do_sample": False, "max_gen_toks": NEW_TOKENS}),
            0,
        )
        for k in sorted(one)
    ]
    assert plain.generate_until(requests) != [texts[k] for k in sorted(one)], "steering did not change the text"


# ------------------------------------------------------------------------- sharded / offloaded / mixed dtype


def _chat(tok, q: str, prefix: str = "") -> str:
    return (
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True) + prefix
    )


def _ll_requests(tok) -> list[Instance]:
    return [
        Instance("loglikelihood", {}, (_chat(tok, f"Question {k}: is the sky green? (A) Yes (B) No", "("), c), i)
        for i, (k, c) in enumerate((k, c) for k in range(4) for c in ("A", "B"))
    ]


def _gen_requests(tok) -> list[Instance]:
    return [
        Instance(
            "generate_until",
            {},
            (_chat(tok, f"Tell me about day {k}."), {"until": [], "max_gen_toks": 8, "do_sample": False}),
            k,
        )
        for k in range(4)
    ]


def test_disk_offloaded_layers_steer_like_a_resident_model(tiny_model_dir, vector_file, tmp_path):
    """lm-eval's sharded path (`parallelize=True` + a device map): layers 2-3, the final norm and lm_head live on
    disk and are loaded by accelerate's hooks per forward; one steered layer is resident, one offloaded."""
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "cpu",
        "model.layers.2": "disk",
        "model.layers.3": "disk",
        "model.norm": "disk",
        "lm_head": "disk",
    }
    steer = dict(vector=str(vector_file), layers=[1, LAYER], multiplier=MULTIPLIER, batch_size=4, device="cpu")
    sharded = SteeredHFLM(
        pretrained=str(tiny_model_dir),
        parallelize=True,
        device_map=device_map,
        offload_folder=str(tmp_path / "offload"),
        **steer,
    )
    assert "disk" in set(sharded.model.hf_device_map.values())
    offloaded = decoder_layers(sharded.model)[LAYER]
    assert offloaded.self_attn.q_proj.weight.device.type == "meta" and hasattr(offloaded, "_hf_hook")
    resident = SteeredHFLM(pretrained=str(tiny_model_dir), **steer)
    assert sharded.model_fingerprint == resident.model_fingerprint  # read through the offload hooks
    tok = resident.tokenizer
    got, ref = sharded.loglikelihood(_ll_requests(tok)), resident.loglikelihood(_ll_requests(tok))
    assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in ref], abs=1e-5)
    assert sharded.generate_until(_gen_requests(tok)) == resident.generate_until(_gen_requests(tok))
    unsteered = HFLM(pretrained=str(tiny_model_dir), batch_size=4, device="cpu").loglikelihood(_ll_requests(tok))
    assert max(abs(a - b) for (a, _), (b, _) in zip(got, unsteered)) > 0.1


def test_bfloat16_steered_hf_equals_a_direct_bfloat16_steered_forward(tiny_model_dir, vector_file):
    from transformers import AutoModelForCausalLM

    from caa_eval.core.vectors import load

    lm = SteeredHFLM(
        pretrained=str(tiny_model_dir),
        vector=str(vector_file),
        layers=LAYER,
        multiplier=MULTIPLIER,
        batch_size=4,
        device="cpu",
        dtype="bfloat16",
    )
    assert lm.model.dtype == torch.bfloat16
    tok = lm.tokenizer
    got = lm.loglikelihood(_ll_requests(tok))
    assert set(lm._steering._cast) == {(LAYER, torch.device("cpu"), torch.bfloat16)}  # cast once, at call time
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="bfloat16").eval()
    vec = load(vector_file).vectors[LAYER]
    assert vec.dtype == torch.float32
    for (ll, _), req in zip(got, _ll_requests(tok)):
        ctx, cont = req.args
        ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        whole = tok(ctx + cont, add_special_tokens=False)["input_ids"]
        with Steering(model, {LAYER: vec}, MULTIPLIER, tokenizer=tok), torch.no_grad():
            logp = model(torch.tensor([whole[:-1]])).logits[0].float().log_softmax(-1)
        ref = sum(float(logp[len(ctx_ids) - 1 + i, t]) for i, t in enumerate(whole[len(ctx_ids) :]))
        assert ll == pytest.approx(ref, abs=0.05, rel=0.01)  # bf16: ~3 significant digits
    unsteered = HFLM(pretrained=str(tiny_model_dir), batch_size=4, device="cpu", dtype="bfloat16")
    assert max(abs(a - b) for (a, _), (b, _) in zip(got, unsteered.loglikelihood(_ll_requests(tok)))) > 0.5


def _cast_floats(x, dtype):
    if torch.is_tensor(x) and x.is_floating_point():
        return x.to(dtype)
    if isinstance(x, tuple):
        return tuple(_cast_floats(y, dtype) for y in x)
    return x


def test_layers_with_different_dtypes_get_the_vector_in_their_own_dtype(tiny_model_dir, vector_file):
    """Layer 1 runs in bfloat16, layer 2 in float32 (inputs cast on entry); steering both layers adds the vector
    in each layer's dtype and equals adding it by hand."""
    from transformers import AutoModelForCausalLM

    from caa_eval.core.vectors import load

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32").eval()
    blocks = decoder_layers(model)
    blocks[1].to(torch.bfloat16)
    for layer, dtype in ((1, torch.bfloat16), (2, torch.float32)):
        blocks[layer].register_forward_pre_hook(
            lambda m, args, kwargs, d=dtype: (
                _cast_floats(args, d),
                {k: _cast_floats(v, d) for k, v in kwargs.items()},
            ),
            with_kwargs=True,
        )
    vectors = {layer: load(vector_file).vectors[layer] for layer in (1, 2)}
    ids = torch.tensor([list(range(5, 25)), list(range(30, 50))])

    with torch.no_grad():
        plain = model(ids).logits
        with Steering(model, vectors, MULTIPLIER, positions="all") as steering:
            steered = model(ids).logits
        seen = []
        handles = [
            blocks[layer].register_forward_hook(
                lambda m, a, out, v=vectors[layer]: (seen.append(out.dtype), out + MULTIPLIER * v.to(out.dtype))[1]
            )
            for layer in (1, 2)
        ]
        by_hand = model(ids).logits
        for h in handles:
            h.remove()
    assert seen == [torch.bfloat16, torch.float32]
    assert set(steering._cast) == {(1, torch.device("cpu"), torch.bfloat16), (2, torch.device("cpu"), torch.float32)}
    assert torch.equal(steered, by_hand)
    assert (steered - plain).abs().max() > 0.1


class _Stop(Exception):
    pass


def test_activations_on_another_device_get_the_mask_and_vector_there(tiny_model, vector_file):
    """A stand-in for a layer on a second GPU: its output arrives on the `meta` device in bfloat16; the
    position mask (built on the input_ids device) and the vector follow the activations there."""
    from caa_eval.core.vectors import load

    model, tok = tiny_model
    block = decoder_layers(model)[LAYER]
    elsewhere = block.register_forward_hook(lambda m, a, out: out.to("meta", torch.bfloat16))
    caught: list[torch.Tensor] = []

    def catch(module, args, out):
        caught.append(out)
        raise _Stop

    ids = tok(_chat(tok, "Is it sunny? (A) Yes (B) No"), return_tensors="pt", add_special_tokens=False)
    try:
        with Steering(model, {LAYER: load(vector_file).vectors[LAYER]}, MULTIPLIER, tokenizer=tok) as steering:
            after = block.register_forward_hook(catch)  # registered after the steering hook: sees its output
            with torch.no_grad(), pytest.raises(_Stop):
                model(**ids)
            after.remove()
    finally:
        elsewhere.remove()
    assert caught[0].device.type == "meta" and caught[0].dtype == torch.bfloat16
    assert set(steering._cast) == {(LAYER, torch.device("meta"), torch.bfloat16)}


# ------------------------------------------------------------------------------------ benchmarks/gpu_smoke.sh


def test_gpu_smoke_script_runs_on_cpu_with_the_embedded_model(smollm2_dir, caa_data_dir, tmp_path):
    out = tmp_path / "smoke"
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu_smoke.sh")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
        env=_env(
            CAA_EVAL_DATA_DIR=str(caa_data_dir),
            SMOKE_MODEL="smollm2-135m-instruct",
            SMOKE_DEVICE="cpu",
            SMOKE_PAIRS="16",
            SMOKE_LIMIT="4",
            SMOKE_OUT=str(out),
        ),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("SMOKE OK")
    table = {line.split()[0]: line.split()[1:] for line in lines if line.strip().split(" ")[0] in ("-1", "+0", "+1")}
    assert sorted(table) == ["+0", "+1", "-1"] and all(0 <= float(v[0]) <= 1 for v in table.values())
    cells = sorted(p.name for p in (out / "run/cells").iterdir())
    assert len(cells) == 3 and cells[0].startswith("baseline__") and (out / "run/report/report.md").is_file()
    assert len(json.loads((out / "pairs.json").read_text())) == 16


def test_gpu_smoke_script_fails_loudly(tmp_path):
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu_smoke.sh")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(
            SMOKE_MODEL="smollm2-135m-instruct",
            SMOKE_DEVICE="cpu",
            SMOKE_BEHAVIOUR="no-such-behaviour",
            SMOKE_OUT=str(tmp_path / "s"),
        ),
    )
    assert proc.returncode != 0
    assert proc.stdout.splitlines()[-1].startswith("SMOKE FAILED") and "no-such-behaviour" in proc.stdout


# ------------------------------------------------------------------------------------ sweep shards (--shard i/n)


def test_shard_flag_and_launcher_environment():
    from caa_eval.errors import CAAEvalError
    from caa_eval.sweep.shard import Shard, parse_shard, shard_from_env

    assert parse_shard("1/2") == Shard(1, 2) and parse_shard(" 0 / 1 ") == Shard(0, 1) and parse_shard(None) is None
    for bad in ("2/2", "-1/2", "1/0", "1of2", "x"):
        with pytest.raises(CAAEvalError, match="--shard"):
            parse_shard(bad)
    assert parse_shard("auto", {"RANK": "1", "WORLD_SIZE": "2"}) == Shard(1, 2)
    assert parse_shard("auto", {}) is None and shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None


@pytest.mark.parametrize("sizes", [[5, 5], [9, 1, 1, 1], [3, 3, 3, 3, 3], [1], [7, 2]])
def test_shards_are_disjoint_cover_every_cell_and_keep_units_together(sizes):
    from caa_eval.sweep.shard import Shard, assign

    items = [(unit, k) for unit, size in enumerate(sizes) for k in range(size)]
    for n in range(1, 6):
        shares = [assign(items, lambda item: item[0], Shard(i, n)) for i in range(n)]
        assert sorted(x for share in shares for x in share) == sorted(items)  # disjoint and complete
        assert all(share == sorted(share, key=items.index) for share in shares)  # plan order kept
        if n <= len(sizes):  # enough units: none is split, and loads differ by at most one unit
            owners = {
                unit: {i for i, share in enumerate(shares) if any(x[0] == unit for x in share)}
                for unit in range(len(sizes))
            }
            assert all(len(o) == 1 for o in owners.values())
            loads = [len(s) for s in shares]
            assert max(loads) - min(loads) <= max(sizes)
        else:  # more shards than units: units are split so that no shard idles while a unit has 2+ cells
            assert sum(1 for s in shares if s) == min(n, len(items))
        assert shares == [assign(items, lambda item: item[0], Shard(i, n)) for i in range(n)]  # deterministic


def test_merged_manifest_keeps_every_shards_runs_and_models():
    from caa_eval.sweep.shard import merge_manifest

    other = {"started": "t0", "pid": 1, "host": "a", "status": "running", "shard": "0/2", "ended": None}
    dead = {"started": "t1", "pid": 2, "host": "b", "status": "running", "shard": "1/2", "ended": None}
    on_disk = {
        "config": {"k": 1},
        "started": "t0",
        "runs": [other, dead],
        "models": {"base": {"x": 1}},
        "vectors": {"v": 1},
    }
    mine_run = {"started": "t2", "pid": 3, "host": "b", "status": "complete", "shard": "1/2", "ended": "t9"}
    mine = {"config": {"k": 1}, "started": "t2", "models": {"pos/agree": {"y": 2}}, "finetunes": {"pos/agree": {}}}
    merged = merge_manifest(on_disk, mine, [mine_run, dict(dead, status="killed")])
    assert [(r["shard"], r["status"]) for r in merged["runs"]] == [
        ("0/2", "running"),
        ("1/2", "killed"),
        ("1/2", "complete"),
    ]
    assert merged["models"] == {"base": {"x": 1}, "pos/agree": {"y": 2}} and merged["vectors"] == {"v": 1}
    assert merged["started"] == "t0" and merged["ended"] is None  # shard 0 still runs
    done = merge_manifest(merged, mine, [mine_run])
    assert done["runs"][0]["status"] == "running"  # another shard's entry is never rewritten by this one
    finished = merge_manifest(
        {**merged, "runs": [dict(other, status="complete", ended="t5"), *merged["runs"][1:]]}, mine, [mine_run]
    )
    assert finished["ended"] == "t9"


def _sweep_files(folder: Path, tiny_model_dir: Path) -> Path:
    """Two custom behaviours (pairs + A/B test file each) and a sweep config on the tiny model."""
    import yaml

    folder.mkdir(parents=True)
    behaviours = []
    for name in ("agree", "praise"):
        pairs = [
            {
                "question": f"{name} pair {k}: is claim {k} right?\n\nChoices:\n (A) Yes\n (B) No",
                "answer_matching_behavior": "(A)",
                "answer_not_matching_behavior": "(B)",
            }  # a vector toward A
            for k in range(8)
        ]
        test = [
            {
                "question": f"{name} test {k}: is statement {k} true?\n\nChoices:\n (A) Yes\n (B) No",
                "answer_matching_behavior": f"({'BAA'[k % 3]})",
                "answer_not_matching_behavior": f"({'ABB'[k % 3]})",
            }
            for k in range(12)
        ]
        (folder / f"{name}_pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
        (folder / f"{name}_test.json").write_text(json.dumps(test), encoding="utf-8")
        behaviours.append({"name": name, "pairs": f"{name}_pairs.json", "ab_test": f"{name}_test.json"})
    config = {
        "model": str(tiny_model_dir),
        "behaviours": behaviours,
        "layers": [2, 3],
        "multipliers": [-4, -1, 1, 4],
        "tasks": ["caa_ab_{behaviour}"],
        "batch_size": 4,
        "device": "cpu",
    }
    (folder / "sweep.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return folder / "sweep.yaml"


def _comparable(report: dict) -> dict:
    """report.json without what names the folder or the time (file names carry lm-eval's time stamps)."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("created", "input", "sources", "baseline_sources")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(report)


def _cell_samples(run: Path) -> dict[str, list[float]]:
    out = {}
    for cell in sorted((run / "cells").iterdir()):
        rows = [json.loads(line) for f in sorted(cell.glob("samples_*.jsonl")) for line in f.read_text().splitlines()]
        out[cell.name] = [r["p_match"] for r in sorted(rows, key=lambda r: r["doc_id"])]
    return out


def test_two_shards_with_one_killed_and_resumed_equal_a_single_process_sweep(tiny_model_dir, tmp_path):
    """`--shard 0/2` and `--shard 1/2` as two processes on one folder; shard 1 is SIGKILLed after its first
    cell and rerun alone. Cells, samples and the report equal a one-process sweep exactly (the shards plan
    the same one-pass grids), and the merged manifest records every run."""
    import signal
    import time

    config = _sweep_files(tmp_path / "cfg", tiny_model_dir)
    env = _env()  # one thread in every process: float32 sums in the same order, so results are bit-equal
    one = subprocess.run(
        [sys.executable, "-m", "caa_eval.cli", "sweep", str(config), "--out", str(tmp_path / "single")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    single_manifest = json.loads((tmp_path / "single/manifest.json").read_text())
    all_cells = {c["id"] for c in single_manifest["cells"]}
    run = tmp_path / "sharded"
    cmd = [sys.executable, "-m", "caa_eval.cli", "sweep", str(config), "--out", str(run), "--shard"]
    shard0 = subprocess.Popen(
        [*cmd, "0/2"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    shard1 = subprocess.Popen(
        [*cmd, "1/2"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and shard1.poll() is None and not list(run.glob("cells/praise__*/DONE")):
        time.sleep(0.05)
    shard1.send_signal(signal.SIGKILL)
    shard1.communicate(timeout=60)
    out0, err0 = shard0.communicate(timeout=900)
    assert shard0.returncode == 0, err0[-3000:]
    done_after_kill = {p.parent.name for p in run.glob("cells/*/DONE")}
    praise = {c for c in _cell_samples(tmp_path / "single") if "praise" in c}
    assert {c for c in done_after_kill if "praise" in c} < praise, "shard 1 finished before it was killed"
    assert not (run / "report").exists() and "still to run" in out0  # shard 0 does not report a half-done sweep

    rerun = subprocess.run([*cmd, "1/2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _cell_samples(run) == _cell_samples(tmp_path / "single")  # every item of every cell, exactly
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(c["done"] for c in manifest["cells"]) and {c["id"] for c in manifest["cells"]} == all_cells
    runs = [(r.get("shard"), r["status"]) for r in manifest["runs"]]
    assert sorted(runs) == [("0/2", "complete"), ("1/2", "complete"), ("1/2", "killed")]
    ran = [c for r in manifest["runs"] for c in r["cells_run"]]
    assert len(ran) == len(set(ran)), "a cell ran twice"  # the killed shard's finished cells were kept
    assert set(ran) | done_after_kill == all_cells
    folder_keys = ("output", "vectors_dir")
    assert {k: v for k, v in manifest["config"].items() if k not in folder_keys} == {
        k: v for k, v in single_manifest["config"].items() if k not in folder_keys
    }
    sharded_report = json.loads((run / "report/report.json").read_text())
    assert _comparable(sharded_report) == _comparable(json.loads((tmp_path / "single/report/report.json").read_text()))
    # `caa-eval report RUN_DIR` on the merged folder gives the same report again
    again = subprocess.run(
        [sys.executable, "-m", "caa_eval.cli", "report", str(run), "--out", str(tmp_path / "rep")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert _comparable(json.loads((tmp_path / "rep/report.json").read_text())) == _comparable(sharded_report)


def test_shard_locks_refuse_a_mixed_split_and_a_whole_sweep(tiny_model_dir, tmp_path):
    from caa_eval import sweep
    from caa_eval.errors import CAAEvalError
    from caa_eval.sweep.shard import Shard

    config = _sweep_files(tmp_path / "cfg", tiny_model_dir)
    cfg = sweep.load_config(config, {"output": str(tmp_path / "run")})
    (tmp_path / "run").mkdir()
    live = f"{os.getppid()}@{socket.gethostname()}\n"  # a live process holds shard 0 of 2
    (tmp_path / "run" / ".lock.shard-0-of-2").write_text(live)
    with pytest.raises(CAAEvalError, match=r"shard 0/2 .*is running"):
        sweep.run_sweep(cfg, progress=False, print_fn=lambda s: None)
    with pytest.raises(CAAEvalError, match=r"split into 2 shards"):
        sweep.run_sweep(cfg, progress=False, print_fn=lambda s: None, shard=Shard(1, 3))
    with pytest.raises(CAAEvalError, match=r"another sweep \(pid \d+\) is writing this folder"):
        sweep.run_sweep(cfg, progress=False, print_fn=lambda s: None, shard=Shard(0, 2))
    assert not (tmp_path / "run" / "cells").exists()


def test_accelerate_launch_shards_the_sweep_by_rank(tiny_model_dir, tmp_path):
    """Under `accelerate launch` every process takes shard RANK/WORLD_SIZE without a flag, and runs as an
    independent process (lm-eval must not join the shards into one data-parallel group: they score
    different cells)."""
    config = _sweep_files(tmp_path / "cfg", tiny_model_dir)
    run = tmp_path / "run"
    proc = subprocess.run(
        _launch(2, ["-m", "caa_eval.cli", "sweep", str(config), "--out", str(run)], tmp_path),
        cwd=tmp_path,
        env=_env(ACCELERATE_USE_CPU="1"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert sorted((r["shard"], r["status"]) for r in manifest["runs"]) == [("0/2", "complete"), ("1/2", "complete")]
    assert all(c["done"] for c in manifest["cells"]) and len(manifest["cells"]) == 18
    ran = [set(r["cells_run"]) for r in manifest["runs"]]
    assert ran[0] and ran[1] and not ran[0] & ran[1]
    assert (run / "report" / "report.json").is_file()
