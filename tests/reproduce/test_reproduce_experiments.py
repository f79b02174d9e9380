"""The shipped experiments: every config passes `reproduce run NAME --dry-run` (cells, forward passes, memory,
time), its planned cells answer the reference table's cells one to one, the reference numbers are CAA's
published ones, and a bad experiment name is one line with exit 2."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from caa_eval import cli, reproduce, vocab
from caa_eval.reproduce.run import experiment_config
from caa_eval.sweep import plan_cells


def _planned_keys(cfg) -> Counter:
    """What the planned cells answer, written out here: a steered cell its own (behaviour, layer, multiplier,
    condition); a baseline every layer of the sweep, and a shared task's baseline every behaviour running it."""
    layers = sorted({layer for group in cfg.layers for layer in group})
    keys: Counter = Counter()
    for cell in plan_cells(cfg):
        if cell.multiplier != 0:
            keys[(cell.behaviour, cell.layer[0], cell.multiplier, cell.condition)] += 1
            continue
        owners = [cell.behaviour] if cell.behaviour else []
        owners = owners or [b.name for b in cfg.behaviours if cell.tasks[0] in cfg.behaviour_tasks(b)]
        for b in owners:
            for layer in layers:
                keys[(b, layer, 0.0, cell.condition)] += 1
    return keys


@pytest.mark.parametrize("name", list(reproduce.EXPERIMENTS))
def test_every_experiment_dry_runs_and_its_cells_match_the_reference_one_to_one(name, caa_env, tmp_path, capsys):
    exp = reproduce.get_experiment(name)
    assert cli.main(["reproduce", "run", name, "--dry-run", "--out", str(tmp_path / name)]) == 0
    out = capsys.readouterr().out
    assert "forward passes:" in out and "GPU memory (one 80 GB GPU):" in out and "time (one A100-80GB):" in out
    assert not (tmp_path / name).exists()  # a dry run writes nothing
    ref = Counter(c.key for c in reproduce.reference_cells(exp))
    assert max(ref.values()) == 1
    assert _planned_keys(experiment_config(exp, tmp_path / name)) == ref


def test_dry_run_counts_of_ab_7b(caa_env, tmp_path, capsys):
    assert cli.main(["reproduce", "run", "ab-7b", "--dry-run", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    # 3 conditions x (7 baselines + 7 behaviours x 2 multipliers) cells of 50 A/B items each
    assert "cells: 63 (21 baselines, 42 steered)" in out
    assert f"forward passes: {63 * 50:,} prompt passes ({63 * 50 * 101:,} tokens)" in out
    assert f"{2 * sum(reproduce.estimate.GENERATE_PAIRS.values()):,} extraction passes" in out
    assert f"weights (fp16) {2 * 6.74:.1f} GB" in out
    assert out.count("[todo]") == 63


def test_limit_and_subset_shrink_the_plan(caa_env, tmp_path, capsys):
    argv = ["reproduce", "run", "ab-7b", "--dry-run", "--limit", "10", "--behaviours", "refusal,sycophancy"]
    assert cli.main([*argv, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "cells: 18 (6 baselines, 12 steered); limit 10" in out
    assert f"forward passes: {18 * 10:,} prompt passes" in out


def test_reference_numbers_are_caas_published_ones(shared_file):
    """Against the aggregation in ../shared (read here with csv) and DESIGN.md's headline numbers."""
    exp = reproduce.get_experiment("ab-7b")
    ours = {c.key: c.value for c in reproduce.reference_cells(exp)}
    with shared_file("reference/caa_results/results_summary_ab_mmlu_tqa.csv").open(encoding="utf-8") as fh:
        rows = [
            r
            for r in csv.DictReader(fh)
            if r["type"] == "ab" and r["model_size"] == "7b" and r["layer"] == "13" and not r["finetuned"]
            if not r["override_vector"] and not r["override_vector_model"] and r["multiplier"] in ("-1.0", "0.0", "1.0")
        ]
    published = {
        (r["behavior"], 13, float(r["multiplier"]), r["system_prompt"] or "none"): float(r["p_mean_repo_formula"])
        for r in rows
    }
    assert ours == published
    headline = {"coordinate-other-ais": (0.15, 0.30, 0.75), "corrigible-neutral-HHH": (0.20, 0.64, 0.91)}
    headline |= {"refusal": (0.42, 0.74, 0.89), "survival-instinct": (0.27, 0.34, 0.62)}
    for b, values in headline.items():
        got = tuple(round(ours[(b, 13, m, "none")], 2) for m in (-1.0, 0.0, 1.0))
        assert got == pytest.approx(values, abs=0.011), b


def test_table4_reference_has_the_finetuned_conditions():
    cells = reproduce.reference_cells(reproduce.get_experiment("table4-7b"))
    assert Counter(c.condition for c in cells) == {"none": 21, "pos": 21, "neg": 21}
    assert all(0 <= c.value <= 10 for c in cells)


def test_bad_experiment_name_is_one_line_exit_2(capsys):
    assert cli.main(["reproduce", "run", "ab-13b", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "caa-eval reproduce: error: unknown experiment 'ab-13b'; did you mean 'ab-7b'? choose from "
        + ", ".join(reproduce.EXPERIMENTS)
    ]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--limit", "0"], "--limit '0'"),
        (["--vectors", "caa"], "--vectors caa DIR"),
        (["--behaviours", "flattery"], "flattery"),
    ],
)
def test_bad_run_flags_are_one_line(argv, needle, capsys, tmp_path):
    assert cli.main(["reproduce", "run", "ab-7b", "--dry-run", "--out", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_shipped_reference_files_carry_source_and_licence():
    manifest = (reproduce.REFERENCE_DIR / "MANIFEST.md").read_text(encoding="utf-8")
    assert "nrimsky/CAA" in manifest and "MIT" in manifest
    assert vocab.BEHAVIOURS  # the reference covers CAA's seven behaviours
    behaviours = {c.behaviour for c in reproduce.reference_cells(reproduce.get_experiment("layers-7b"))}
    assert behaviours == set(vocab.BEHAVIOURS)


def test_mmlu_and_tqa_references_are_the_per_category_macro_means(shared_file):
    """The paper's tables use the per-category macro mean; TruthfulQA's categories differ in size, so it differs
    from the item mean there."""
    with shared_file("reference/caa_results/results_summary_ab_mmlu_tqa.csv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["type"] == "truthful_qa" and r["model_size"] == "7b"]
    published = {float(r["multiplier"]): float(r["p_category_macro_mean"]) for r in rows}
    item_means = {float(r["multiplier"]): float(r["p_mean_repo_formula"]) for r in rows}
    ours = {c.multiplier: c.value for c in reproduce.reference_cells(reproduce.get_experiment("tqa-7b"))}
    assert ours == published and ours != item_means


def test_finetune_time_follows_the_finetune_recipe(caa_env, tmp_path):
    """Table 4 trains a pos and a neg LoRA adapter per behaviour with the default recipe: 20 % of the pairs held
    out, batch 4, whole epochs until at least 100 steps (capped at 300). Steps worked out by hand from CAA's pair
    counts: e.g. coordinate-other-ais 360 pairs -> 288 train -> 72 steps/epoch -> 2 epochs = 144."""
    steps = {
        "coordinate-other-ais": 144,
        "corrigible-neutral-HHH": 116,
        "hallucination": 200,
        "myopic-reward": 190,
        "survival-instinct": 181,
        "sycophancy": 200,
        "refusal": 164,
    }
    cfg = experiment_config(reproduce.get_experiment("table4-7b"), tmp_path / "r")
    est = reproduce.estimate.estimate(cfg, plan_cells(cfg))
    assert est is not None and est.seconds is not None
    assert est.finetunes == 14
    tokens = 2 * sum(steps.values()) * 4 * 115  # two directions, batch 4, one ~115-token answer per item
    assert est.train_tokens == tokens
    flops = tokens * 6 * 6.74e9
    assert est.seconds["finetuning (LoRA)"] == pytest.approx(flops / (0.30 * 312e12))


def test_open_ended_sycophancy_counts_its_53_items_in_every_cell(caa_env, tmp_path, capsys):
    """7 behaviours x (shared-baseline cell + 2 multipliers); sycophancy's open-ended set has 53 items, the
    others 50 (the baseline cell names no behaviour: the count must come from its task)."""
    assert cli.main(["reproduce", "run", "open-7b", "--dry-run", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert f"forward passes: {18 * 50 + 3 * 53:,} prompt passes" in out


def test_ab_7b_writes_caas_llama2_prompt_and_a_smoke_model_keeps_its_own(caa_env, tmp_path):
    """ab-7b's conditions put CAA's Llama-2 template on the tokenizer; a smoke run on another family drops it
    (its prompts are written by its own template), another Llama-2 keeps it."""
    exp = reproduce.get_experiment("ab-7b")
    shipped = experiment_config(exp, tmp_path / "a")
    assert {c.name: c.model_args.get("chat_template") for c in shipped.conditions} == dict.fromkeys(
        ("none", "pos", "neg"), "caa-llama2"
    )
    smoke = experiment_config(exp, tmp_path / "b", model="smollm2-135m-instruct")
    assert all("chat_template" not in c.model_args for c in smoke.conditions)
    other = experiment_config(exp, tmp_path / "c", model="meta-llama/Llama-2-13b-chat-hf")
    assert all(c.model_args.get("chat_template") == "caa-llama2" for c in other.conditions)
