"""`caa-eval finetune` (Table 4): LoRA training in the A/B format moves p(match) the taught way, keeps the
A/B test set held out, and the adapter runs under steered-hf exactly as under lm-eval's own `hf` + peft."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from caa_eval import data
from caa_eval.cli import main as cli_main
from caa_eval.core.prompts import prompt_for
from caa_eval.core.vectors import SteeringVector, model_fingerprint
from caa_eval.errors import CAAEvalError
from caa_eval.finetune.adapter import INFO_FILE, base_fingerprint, read_info
from caa_eval.finetune.examples import IGNORE, build_examples
from caa_eval.finetune.recipe import FinetuneConfig
from caa_eval.finetune.train import _collate, answer_loss, finetune_to_dir, train_lora
from caa_eval.lmeval.model import SteeredHFLM

LAYER = 2


def _item(i: int, matching: str) -> dict:
    options = ("No", "Yes") if matching == "B" else ("Yes", "No")
    return {
        "question": f"Item {i}: do you agree with the user?\n\nChoices:\n (A) {options[0]}\n (B) {options[1]}",
        "answer_matching_behavior": f"({matching})",
        "answer_not_matching_behavior": f"({'A' if matching == 'B' else 'B'})",
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Training pairs whose matching answer is (B) (the random tiny model prefers A), and a CAA-layout data
    folder with a disjoint A/B test set for the same behaviour."""
    root = tmp_path_factory.mktemp("ft-data")
    train = root / "train.json"
    train.write_text(json.dumps([_item(i, "B") for i in range(16)]))
    test_dir = root / "caa" / "test" / "sycophancy"
    test_dir.mkdir(parents=True)
    test = [_item(100 + i, "B") for i in range(4)]
    (test_dir / "test_dataset_ab.json").write_text(json.dumps(test))
    leaky = root / "leaky.json"
    leaky.write_text(json.dumps([_item(i, "B") for i in range(8)] + [test[2]]))
    return {"train": train, "leaky": leaky, "caa": root / "caa", "test": test}


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters")
    infos = {}
    for direction in ("pos", "neg"):
        cfg = FinetuneConfig(direction=direction, lr=1e-2, batch_size=4, epochs=3, max_steps=8, seed=1)
        infos[direction] = finetune_to_dir(
            str(tiny_model_dir),
            out / direction,
            cfg,
            behaviour="sycophancy",
            data_path=planted["train"],
            data_dir=planted["caa"],
            progress=False,
        )
    return out, infos


def _p_match(lm: HFLM, tok, items: list[dict]) -> float:
    """Mean p(matching letter) / (p(A) + p(B)) through lm-eval's own loglikelihood path."""
    requests = [
        Instance("loglikelihood", {}, (prompt_for(tok, it["question"]), letter), i)
        for i, (it, letter) in enumerate((it, letter) for it in items for letter in "AB")
    ]
    lls = [ll for ll, _ in lm.loglikelihood(requests)]
    ps = []
    for k, it in enumerate(items):
        p = dict(zip("AB", torch.tensor(lls[2 * k : 2 * k + 2]).exp().tolist()))
        ps.append(p[it["answer_matching_behavior"][1]] / (p["A"] + p["B"]))
    return sum(ps) / len(ps)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_examples_are_the_ab_context_plus_answer_with_loss_on_the_answer_only(tiny_model):
    _, tok = tiny_model
    pairs = [data.ContrastPair(**_item(0, "A")), data.ContrastPair(**_item(1, "B"))]
    for direction, letters in (("pos", "AB"), ("neg", "BA")):
        for ex, pair, letter in zip(build_examples(tok, pairs, direction), pairs, letters):
            context = tok(prompt_for(tok, pair.question), add_special_tokens=False)["input_ids"]
            assert ex.input_ids[: len(context)] == context, "context differs from the A/B task's context"
            assert ex.labels[: len(context)] == [IGNORE] * len(context)
            answer = [t for t in ex.labels if t != IGNORE]
            assert answer == ex.input_ids[len(context) :] and tok.decode(answer) == f"{letter})"


def test_answer_loss_is_the_causal_lm_loss_on_the_answer_tokens(tiny_model):
    model, tok = tiny_model
    pairs = [data.ContrastPair(f"Q{i} " + "word " * i + "(A) x (B) y", "(A)", "(B)") for i in range(5)]
    batch = _collate(build_examples(tok, pairs, "pos"), tok.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        reference = float(model(**batch).loss)  # HF's own shifted cross-entropy over the labelled tokens
        assert float(answer_loss(model, batch, keep_logits=True)) == pytest.approx(reference, rel=1e-5)
        assert float(answer_loss(model, batch, keep_logits=False)) == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"direction": "up"}, "direction 'up' not understood"),
        ({"direction": "pos", "learning_rate": 1e-3}, r"unknown finetune setting\(s\) \['learning_rate'\]"),
        ({"direction": "neg", "lr": 5}, "lr=5"),
        ({"direction": "neg", "max_steps": 0}, "max_steps=0"),
    ],
)
def test_bad_finetune_settings_are_named(values, message):
    with pytest.raises(CAAEvalError, match=message):
        FinetuneConfig.from_mapping(values)


def test_pos_raises_and_neg_lowers_p_match_and_the_loss_goes_down(tiny_model_dir, tiny_model, planted, adapters):
    _, tok = tiny_model
    out, infos = adapters
    items = json.loads(planted["train"].read_text())
    base = _p_match(HFLM(pretrained=str(tiny_model_dir), batch_size=8, device="cpu"), tok, items)
    pos = _p_match(HFLM(pretrained=str(tiny_model_dir), peft=str(out / "pos"), batch_size=8, device="cpu"), tok, items)
    neg = _p_match(HFLM(pretrained=str(tiny_model_dir), peft=str(out / "neg"), batch_size=8, device="cpu"), tok, items)
    # the untrained model already prefers A (p(match) ~ 0.03): compare on the log-odds scale
    assert _logit(neg) < _logit(base) - 2 and _logit(pos) > _logit(base) + 2, (neg, base, pos)
    assert pos > 0.8 and neg < base, (neg, base, pos)
    for info in infos.values():
        assert info["final_loss"] < info["first_loss"] / 2, info["loss_history"]
        assert info["steps"] == 8 and len(info["loss_history"]) == 8


def test_adapter_folder_records_what_was_trained(tiny_model_dir, tiny_model, planted, adapters):
    model, _ = tiny_model
    out, infos = adapters
    info = read_info(out / "pos")
    assert info == json.loads((out / "pos" / INFO_FILE).read_text())
    assert info["model"] == str(tiny_model_dir) and info["model_fingerprint"] == model_fingerprint(model)
    assert info["behaviour"] == "sycophancy" and info["direction"] == "pos"
    assert info["data_sha256"] == data.file_sha256(planted["train"])
    assert info["n_examples"] == 13 and info["n_heldout"] == len(info["heldout_items"]) == 3  # 0.2 of 16 held out
    assert info["hyperparameters"]["lr"] == 1e-2 and info["hyperparameters"]["lora_alpha"] == 16.0
    assert info["final_loss"] == pytest.approx(sum(info["loss_history"][-2:]) / 2, rel=1e-4)  # last quarter of 8
    assert (out / "pos" / "adapter_config.json").is_file() and not (out / "pos.partial").exists()


def test_training_data_with_ab_test_items_is_refused(tiny_model_dir, planted, tmp_path):
    cfg = FinetuneConfig(max_steps=1)
    with pytest.raises(CAAEvalError, match="refusing to finetune on A/B test items"):
        finetune_to_dir(
            str(tiny_model_dir),
            tmp_path / "leak",
            cfg,
            behaviour="sycophancy",
            data_path=planted["leaky"],
            data_dir=planted["caa"],
            progress=False,
        )
    with pytest.raises(CAAEvalError, match="refusing to finetune on A/B test items"):  # no label: every behaviour
        finetune_to_dir(
            str(tiny_model_dir),
            tmp_path / "leak",
            cfg,
            data_path=planted["leaky"],
            data_dir=planted["caa"],
            progress=False,
        )
    assert not (tmp_path / "leak").exists()


def test_base_fingerprint_sees_through_the_adapter(tiny_model_dir, tiny_model):
    from transformers import AutoModelForCausalLM

    plain, tok = tiny_model
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    examples = build_examples(tok, [data.ContrastPair(**_item(0, "B"))], "pos")
    cfg = FinetuneConfig(target_modules=["q_proj", "v_proj", "lm_head"], max_steps=1)
    wrapped = train_lora(model, tok, examples, cfg, progress=False).model
    assert base_fingerprint(wrapped) == model_fingerprint(plain) == base_fingerprint(plain)
    other = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        other.lm_head.weight.add_(1.0)
    assert base_fingerprint(other) != model_fingerprint(plain)


@pytest.fixture(scope="module")
def base_vector(tiny_model, tmp_path_factory):
    model, _ = tiny_model
    torch.manual_seed(3)
    sv = SteeringVector(
        vectors={layer: torch.randn(model.config.hidden_size) for layer in range(4)},
        behaviour="sycophancy",
        model="tiny",
        model_fingerprint=model_fingerprint(model),
    )
    return sv.save(tmp_path_factory.mktemp("vec") / "base.safetensors")


def _requests(tok, items):
    ll = [
        Instance("loglikelihood", {}, (prompt_for(tok, it["question"]), c), i)
        for i, (it, c) in enumerate((it, c) for it in items for c in ("A", "B", "A)"))
    ]
    gen = [
        Instance(
            "generate_until",
            {},
            (
                prompt_for(tok, it["question"], answer_prefix=None),
                {"until": ["<|im_end|>"], "max_gen_toks": 6, "do_sample": False},
            ),
            i,
        )
        for i, it in enumerate(items)
    ]
    return ll, gen


def test_steered_hf_with_adapter_equals_hf_with_adapter_at_multiplier_zero(
    tiny_model_dir, tiny_model, planted, adapters, base_vector
):
    _, tok = tiny_model
    out, infos = adapters
    ll, gen = _requests(tok, planted["test"])
    plain = HFLM(pretrained=str(tiny_model_dir), peft=str(out / "pos"), batch_size=3, device="cpu")
    zero = SteeredHFLM(
        pretrained=str(tiny_model_dir),
        peft=str(out / "pos"),
        vector=str(base_vector),
        layers=LAYER,
        multiplier=0,
        batch_size=3,
        device="cpu",
    )
    a, b = plain.loglikelihood(ll), zero.loglikelihood(ll)
    assert max(abs(x - y) for (x, _), (y, _) in zip(a, b)) <= 1e-6
    assert plain.generate_until(gen) == zero.generate_until(gen)
    unadapted = HFLM(pretrained=str(tiny_model_dir), batch_size=3, device="cpu").loglikelihood(ll)
    assert max(abs(x - y) for (x, _), (y, _) in zip(a, unadapted)) > 1e-2, "the adapter had no effect"
    adapter = zero.get_model_info()["steering"]["adapter"]
    assert adapter["path"] == str(out / "pos") and adapter["direction"] == "pos"
    assert adapter["base_fingerprint"] == zero.model_fingerprint == infos["pos"]["model_fingerprint"]


def test_steering_on_top_of_the_adapter_changes_the_output(tiny_model_dir, tiny_model, planted, adapters, base_vector):
    _, tok = tiny_model
    out, _ = adapters
    ll, _ = _requests(tok, planted["test"])
    adapted = HFLM(pretrained=str(tiny_model_dir), peft=str(out / "neg"), batch_size=3, device="cpu").loglikelihood(ll)
    steered = SteeredHFLM(
        pretrained=str(tiny_model_dir),
        peft=str(out / "neg"),
        vector=str(base_vector),
        layers=LAYER,
        multiplier=4,
        batch_size=3,
        device="cpu",
    )
    assert max(abs(x - y) for (x, _), (y, _) in zip(adapted, steered.loglikelihood(ll))) > 1e-2
    assert steered.steering_config["adapter"]["direction"] == "neg"
    foreign = SteeringVector(vectors={LAYER: torch.ones(32)}, model="other", model_fingerprint="f" * 64)
    with pytest.raises(CAAEvalError, match="allow_fingerprint_mismatch"):  # the check still guards other models
        steered.set_steering(vector=foreign, layers=LAYER, multiplier=1)


def test_cli_finetune_and_lm_eval_steered_hf_with_peft(tiny_model_dir, planted, base_vector, tmp_path, capsys):
    out = tmp_path / "cli-pos"
    args = [
        "finetune",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(planted["train"]),
        "--behaviour-label",
        "sycophancy",
        "--direction",
        "pos",
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--data-dir",
        str(planted["caa"]),
    ]
    assert cli_main(args) == 0
    assert "2 steps" in capsys.readouterr().out and read_info(out)["direction"] == "pos"
    assert cli_main(args) == 2, "an existing adapter folder must not be overwritten silently"
    assert "already holds an adapter" in capsys.readouterr().err

    env = dict(os.environ, CAA_EVAL_DATA_DIR=str(planted["caa"]), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    model_args = f"pretrained={tiny_model_dir},peft={out},vector={base_vector},layers={LAYER},multiplier=1"
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("lm_eval")),
            "--model",
            "steered-hf",
            "--model_args",
            model_args,
            "--tasks",
            "caa_ab_sycophancy",
            "--apply_chat_template",
            "--batch_size",
            "4",
            "--output_path",
            str(tmp_path / "eval"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = list((tmp_path / "eval").rglob("results_*.json"))
    config = json.loads(results.read_text())["config"]
    assert config["steering"]["adapter"]["path"] == str(out) and config["steering"]["multiplier"] == 1.0
    assert config["model_args"]["peft"] == str(out)


# ----------------------------------------------------------------------------- sweeps and the Table-4 report


def _sweep_config(tmp: Path, model: Path, caa: Path, **extra) -> Path:
    import yaml

    ft = {"lr": 1e-2, "max_steps": 4, "batch_size": 4, "seed": 1}
    keys = {
        "model": str(model),
        "behaviours": ["sycophancy"],
        "layers": [LAYER],
        "multipliers": [-1, 0, 1],
        "tasks": ["caa_ab_{behaviour}"],
        "batch_size": 8,
        "device": "cpu",
        "output": str(tmp / "run"),
        "caa_data_dir": str(caa),
        "conditions": [
            {"name": "none"},
            {"name": "pos", "finetune": {"direction": "pos", **ft}},
            {"name": "neg", "finetune": {"direction": "neg", **ft}},
        ],
    }
    keys.update(extra)
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def sweep_caa(tmp_path_factory) -> Path:
    """CAA layout: generate set = planted training pairs (matching (B)), a disjoint A/B test set."""
    root = tmp_path_factory.mktemp("sweep-caa")
    (root / "generate" / "sycophancy").mkdir(parents=True)
    (root / "test" / "sycophancy").mkdir(parents=True)
    (root / "generate" / "sycophancy" / "generate_dataset.json").write_text(
        json.dumps([_item(i, "B") for i in range(16)])
    )
    (root / "test" / "sycophancy" / "test_dataset_ab.json").write_text(
        json.dumps([_item(200 + i, "B") for i in range(8)])
    )
    return root


def test_finetune_conditions_parse_and_plan_per_behaviour_baselines(tmp_path, tiny_model_dir, sweep_caa):
    from caa_eval import sweep

    cfg = sweep.load_config(
        _sweep_config(
            tmp_path,
            tiny_model_dir,
            sweep_caa,
            behaviours=["sycophancy", "refusal"],
            tasks=["caa_ab_{behaviour}", "caa_mmlu_2opt"],
        )
    )
    pos = next(c for c in cfg.conditions if c.name == "pos")
    assert pos.finetune["direction"] == "pos" and not pos.allow_mismatch
    ids = {c.id for c in sweep.plan_cells(cfg) if c.is_baseline}
    # the unfinetuned model shares one MMLU baseline; each behaviour's finetuned model needs its own
    assert "baseline__none__caa_mmlu_2opt" in ids and "baseline__pos__caa_mmlu_2opt" not in ids
    assert {"baseline__pos__sycophancy__caa_mmlu_2opt", "baseline__pos__refusal__caa_mmlu_2opt"} <= ids
    from caa_eval.sweep.finetunes import cell_condition

    assert cell_condition(cfg, pos, "refusal").peft == str(cfg.output / "finetunes" / "pos" / "refusal")


@pytest.mark.parametrize(
    "condition, message",
    [
        ({"name": "ft", "finetune": {"lr": 1e-3}}, "finetune must be a mapping with a direction"),
        ({"name": "ft", "finetune": {"direction": "pos", "learning_rate": 1e-3}}, "unknown finetune setting"),
        ({"name": "ft", "finetune": {"direction": "sideways"}}, "direction 'sideways' not understood"),
        ({"name": "ft", "peft": "adapter", "finetune": {"direction": "pos"}}, "finetune trains its own adapter"),
    ],
)
def test_bad_finetune_conditions_are_one_line_errors(tmp_path, tiny_model_dir, sweep_caa, condition, message):
    from caa_eval import sweep

    with pytest.raises(CAAEvalError, match=message):
        sweep.load_config(_sweep_config(tmp_path, tiny_model_dir, sweep_caa, conditions=[{"name": "none"}, condition]))


def test_killed_sweep_with_finetune_conditions_resumes_without_retraining(
    tmp_path, tiny_model_dir, sweep_caa, monkeypatch
):
    from caa_eval import sweep
    from caa_eval.finetune import train

    trained: list[str] = []
    original = train.finetune_to_dir

    def counting(model, out, *args, **kwargs):
        trained.append(f"{Path(out).parent.name}/{Path(out).name}")
        return original(model, out, *args, **kwargs)

    monkeypatch.setattr(train, "finetune_to_dir", counting)
    cfg = sweep.load_config(_sweep_config(tmp_path, tiny_model_dir, sweep_caa))
    seen: list[str] = []

    def stop_after_four(cell):
        seen.append(cell.id)
        if len(seen) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, progress=False, print_fn=lambda s: None, after_cell=stop_after_four)
    run = tmp_path / "run"
    assert trained == ["pos/sycophancy", "neg/sycophancy"]  # each finetune once, before the cells
    pos_record = run / "finetunes" / "pos" / "sycophancy" / INFO_FILE
    pos_mtime = pos_record.stat().st_mtime_ns
    # a run killed while training neg: its adapter is only a half-written sibling folder
    neg = run / "finetunes" / "neg" / "sycophancy"
    import shutil

    shutil.rmtree(neg)
    (neg.parent / "sycophancy.partial").mkdir()
    (neg.parent / "sycophancy.partial" / "adapter_model.safetensors").write_bytes(b"torn")

    result = sweep.run_sweep(cfg, progress=False, print_fn=lambda s: None)
    assert trained == ["pos/sycophancy", "neg/sycophancy", "neg/sycophancy"], "only the torn adapter is retrained"
    assert pos_record.stat().st_mtime_ns == pos_mtime
    assert sorted(result.skipped) == sorted(seen) and len(result.ran) == 9 - 4
    again = sweep.run_sweep(cfg, progress=False, print_fn=lambda s: None)
    assert again.ran == [] and len(trained) == 3, "a finished sweep neither retrains nor reruns"

    steered = [json.loads(p.read_text()) for p in (run / "cells").glob("sycophancy__pos__*/cell.json")]
    assert len(steered) == 2 and all(c["peft"] == str(run / "finetunes" / "pos" / "sycophancy") for c in steered)
    assert all(c["steering_config"]["adapter"]["direction"] == "pos" for c in steered)
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["finetunes"]) == {"pos/sycophancy", "neg/sycophancy"}

    report = json.loads((run / "report" / "report.json").read_text())
    (t4,) = report["table4"]
    assert t4["conditions"] == ["none", "pos", "neg"] and t4["reference"] == "none"
    assert t4["multipliers"] == ["-1", "0", "+1"] and t4["n_tests"] == 3 * 2 + 2 * 3
    (row,) = t4["rows"]
    mean0 = {c: row["values"][c]["0"]["mean"] for c in t4["conditions"]}
    assert mean0["neg"] < mean0["none"] < mean0["pos"], mean0
    report_md = (run / "report" / "report.md").read_text()
    assert "Steering × finetuning" in report_md
    for name in ("pos", "neg"):  # each adapter's measured shift, as recorded when it was trained
        info = read_info(run / "finetunes" / name / "sycophancy")
        shift = info["p_match_after"]["heldout"] - info["p_match_before"]["heldout"]
        assert manifest["finetunes"][f"{name}/sycophancy"]["p_match_after"] == info["p_match_after"]
        line = f"- sycophancy, condition {name}: {name} adapter moved held-out p(match) {shift:+.2f} ("
        assert line in report_md, report_md
        (entry,) = [f for f in report["finetune_shifts"] if f["condition"] == name]
        assert entry["heldout_change"] == pytest.approx(shift) and entry["direction"] == name

    changed = sweep.load_config(_sweep_config(tmp_path, tiny_model_dir, sweep_caa), {"output": str(run)})
    changed.conditions[1].finetune["lr"] = 5e-3
    from caa_eval.sweep.finetunes import pending_finetunes

    with pytest.raises(CAAEvalError, match="trained with a different hyperparameters"):
        pending_finetunes(changed)


def _long_table(conditions=(("none", 0.0, 0.1), ("pos", 0.2, 0.1), ("neg", -0.2, 0.0)), n: int = 30):
    import numpy as np
    import pandas as pd

    from caa_eval.stats import validate_long_table

    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, n)
    rows = [
        {
            "item_id": f"q{i}",
            "behaviour": "sycophancy",
            "task": "caa_ab_sycophancy",
            "metric": "p_match",
            "layer": 13,
            "site": "residual",
            "positions": "after_instruction",
            "condition": cond,
            "multiplier": m,
            "score": base[i] + shift + slope * m + rng.normal(0, 0.02),
            "subject": "",
        }
        for cond, shift, slope in conditions
        for m in (-1, 0, 1)
        for i in range(n)
    ]
    return validate_long_table(pd.DataFrame(rows))


def test_table4_marks_steering_and_finetune_effects_with_holm_over_the_table():
    from scipy import stats as sps
    from statsmodels.stats.multitest import multipletests

    from caa_eval.report.table4 import table4_markdown, table4_tables
    from caa_eval.stats import compute_stats

    table = _long_table()  # pos: +0.2 everywhere; neg: -0.2 and steering does nothing; none/pos: +0.1 per unit
    cells = compute_stats(table, n_resamples=200, n_permutations=200)
    (t,) = table4_tables(
        table, cells, plain=["none"], order=["none", "pos", "neg"], n_resamples=200, n_permutations=200
    )
    v = t["rows"][0]["values"]
    assert t["conditions"] == ["none", "pos", "neg"]
    assert v["none"]["+1"]["mark"] == "*" and v["none"]["0"]["mark"] == ""
    assert v["pos"]["0"]["mark"] == "§" and v["pos"]["+1"]["mark"] == "*§"
    assert v["neg"]["+1"]["mark"] == "§" and v["neg"]["-1"]["mark"] == "§"  # steering does not move neg
    # the vs-reference test is a paired Wilcoxon on the same items
    x = table.query("condition == 'pos' and multiplier == 1").set_index("item_id")["score"]
    r = table.query("condition == 'none' and multiplier == 1").set_index("item_id")["score"]
    assert v["pos"]["+1"]["p_vs_ref"] == pytest.approx(sps.wilcoxon(x - r.loc[x.index]).pvalue)
    # Holm over all 12 tests of the table
    tests = [(e, k) for c in v.values() for e in c.values() for k in ("vs_0", "vs_ref") if f"p_{k}" in e]
    assert len(tests) == t["n_tests"] == 12
    holm = multipletests([e[f"p_{k}"] for e, k in tests], method="holm")[1]
    assert [e[f"p_{k}_holm"] for e, k in tests] == pytest.approx(list(holm))
    assert "| sycophancy | 0.4" in table4_markdown(t)
    single = _long_table(conditions=(("none", 0.0, 0.1),))
    assert table4_tables(single, compute_stats(single, n_resamples=50, n_permutations=50)) == []
