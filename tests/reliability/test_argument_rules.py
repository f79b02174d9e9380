"""Issue 26: every argument of every caa-eval command has a declared range (caa_eval.cli.arguments), and every
range that can be refused is refused before anything loads: exit 2, one stderr line naming the argument,
nothing written (inputs, working folder, user cache), and no model / tokenizer / data / vector loader called,
the command's run() never reached. Ranges that need the model are refused right after it loads, before any
forward pass.

One bad value per row of the table (`BAD`, `AFTER_LOAD`); choices and output locations get theirs from the
parser (`_auto_cases`). A declared row without a bad value here fails `test_every_refusable_row_has_a_case`.
"""

from __future__ import annotations

import importlib

import pytest
from _harness import Case, check, cli

from caa_eval.cli import COMMANDS
from caa_eval.cli.arguments import Rule, command_rows

VEC = "{vec}/good.safetensors"  # layers 1 and 2 of the tiny model (4 layers, hidden size 32)
BASE: dict[str, list[str]] = {  # argv that passes every rule (test_base_argv_reaches_run)
    "extract": ["extract", "--model", "{tiny}", "--data", "{pairs}/good.json", "--out", "{out}/v.safetensors"],
    "import-caa": ["import-caa", "{vec}", "--out-dir", "{out}/imported"],
    "normalize": ["normalize", VEC, "{vec}/fingerprint.safetensors", "--out-dir", "{out}/norm"],
    "inspect": ["inspect", VEC],
    "judge": ["judge", "{judge}/fine", "--no-cache"],
    "stats": ["stats", "{scores}/good.csv"],
    "report": ["report", "{scores}/good.csv", "--out", "{out}/report"],
    "sweep": ["sweep", "{sweep}/configs/good.yaml"],
    "demo": ["demo", "--out", "{out}/demo"],
    "tokens": ["tokens", "--model", "{tiny}", "--vector", VEC, "--layer", "1", "--prompt", "hi"]
    + ["--json", "{out}/t.json", "--html", "{out}/t.html"],
    "similarity layers": ["similarity", "layers", VEC, "--csv", "{out}/s.csv"],
    "similarity files": ["similarity", "files", VEC, VEC, "--csv", "{out}/s.csv"],
    "elicit": ["elicit", "--model", "{tiny}", "--behavior", "sycophancy", "--vector", VEC, "--layer", "1"]
    + ["--json", "{out}/e.json"],
    "calibrate": ["calibrate", "--model", "{tiny}", "--vector", VEC, "--layer", "1"],
    "finetune": [
        "finetune",
        "--model",
        "{tiny}",
        "--behavior",
        "sycophancy",
        "--direction",
        "pos",
        "--out",
        "{out}/ft",
    ],
    "data download": ["data", "download", "--dest", "{out}/data"],
    "data status": ["data", "status"],
    "tasks": ["tasks"],
    "model prepare": ["model", "prepare"],
    "steerability": ["steerability", "{scores}/good.csv"],
    "reproduce run": ["reproduce", "run", "ab-7b", "--dry-run", "--out", "{out}/repro"],
    "reproduce compare": ["reproduce", "compare", "{scores}/good.csv", "--reference", "ab-7b"],
    "convert": ["convert", VEC, "--to", "gguf", "--out", "{out}/v.gguf"],
    "parity": ["parity", "--model", "{tiny}", "--vector", VEC, "--layer", "1", "--task", "caa_demo_optimism_ab"],
}

# (command, argument) -> (bad argv: appended to BASE, or a whole argv starting with the command; text the one
# stderr line must contain). Argparse keeps the last value of a repeated option, so appending overrides BASE.
BAD: dict[tuple[str, str], tuple[list[str], str]] = {
    ("extract", "--data"): (["--data", "{pairs}/nope.json"], "--data"),
    ("extract", "--behavior"): (
        ["extract", "--model", "{tiny}", "--behavior", "sycophantic", "--out", "{out}/v.safetensors"],
        "sycophantic",
    ),
    ("extract", "--out"): (["--out", "{out}/v.pt"], "--out"),
    ("extract", "--layers"): (["--layers", "3-1"], "--layers"),
    ("extract", "--batch-size"): (["--batch-size", "0"], "--batch-size"),
    ("extract", "--device"): (["--device", "gpu"], "--device"),
    ("import-caa", "folder"): (["import-caa", "{file}", "--out-dir", "{out}/imported"], "folder"),
    ("normalize", "files"): (["normalize", VEC, "{vec}/nope.safetensors", "--out-dir", "{out}/n"], "files"),
    ("normalize", "files#2"): (["normalize", VEC, "--out-dir", "{out}/n"], "files"),
    ("normalize", "--out-dir"): (["--out-dir", "{vec}"], "--out-dir"),
    ("inspect", "file"): (["inspect", "{vec}/nope.safetensors"], "file"),
    ("judge", "RUN_DIR_OR_SAMPLES"): (["judge", "{judge}/nope"], "RUN_DIR_OR_SAMPLES"),
    ("judge", "--judge-base-url"): (["--judge-base-url", "127.0.0.1:8000/v1"], "--judge-base-url"),
    ("judge", "--concurrency"): (["--concurrency", "0"], "--concurrency"),
    ("judge", "--timeout"): (["--timeout", "0"], "--timeout"),
    ("judge", "--max-retries"): (["--max-retries", "-1"], "--max-retries"),
    ("judge", "--batch-size"): (["--batch-size", "0"], "--batch-size"),
    ("judge", "--rubrics"): (["--rubrics", "{judge}/nope.yaml"], "--rubrics"),
    ("judge", "--cache"): (["--cache", "{out}/c.sqlite"], "--cache"),
    ("stats", "input"): (["stats", "{scores}/nope.csv"], "input"),
    ("stats", "--metrics"): (["--metrics", ","], "--metrics"),
    ("stats", "--alpha"): (["--alpha", "1"], "--alpha"),
    ("stats", "--seed"): (["--seed", "-1"], "--seed"),
    ("stats", "--n-resamples"): (["--n-resamples", "5"], "--n-resamples"),
    ("stats", "--n-permutations"): (["--n-permutations", "5"], "--n-permutations"),
    ("report", "input"): (["report", "{scores}/nope.csv"], "input"),
    ("report", "--alpha"): (["--alpha", "0"], "--alpha"),
    ("report", "--seed"): (["--seed", "-3"], "--seed"),
    ("report", "--n-resamples"): (["--n-resamples", "99"], "--n-resamples"),
    ("report", "--n-permutations"): (["--n-permutations", "0"], "--n-permutations"),
    ("convert", "file"): (["convert", "{vec}/nope.safetensors", "--to", "gguf", "--out", "{out}/v.gguf"], "file"),
    ("convert", "--out"): (["--out", "{out}/v.safetensors"], "--out"),
    ("convert", "--multiplier"): (["--multiplier", "nan"], "--multiplier"),
    ("parity", "--vector"): (["--vector", "{vec}/nope.safetensors"], "--vector"),
    ("parity", "--layer"): (["--layer", "3"], "--layer"),
    ("parity", "--multiplier"): (["--multiplier", "inf"], "--multiplier"),
    ("parity", "--limit"): (["--limit", "0"], "--limit"),
    ("parity", "--backends"): (["--backends", "steered-hf"], "--backends"),
    ("parity", "--gguf"): (["--gguf", "{out}/nope.gguf"], "--gguf"),
    ("parity", "--batch-size"): (["--batch-size", "0"], "--batch-size"),
    ("parity", "--device"): (["--device", "gpu"], "--device"),
    ("parity", "--tolerance"): (["--tolerance", "0"], "--tolerance"),
    ("report", "--tokens"): (["--tokens", "-1"], "--tokens"),
    ("report", "--tokens#2"): (["--tokens", "2"], "--tokens"),  # a long table has no model to draw tokens with
    ("report", "--device"): (["--device", "gpu"], "--device"),
    ("sweep", "config"): (["sweep", "{sweep}/configs/nope.yaml"], "config"),
    ("sweep", "config#2"): (["sweep", "{sweep}/configs/typo.yaml"], "multiplers"),
    ("sweep", "--out"): (["--out", "{file}/run"], "--out"),
    ("sweep", "--limit"): (["--limit", "0"], "--limit"),
    ("sweep", "--layers"): (["--layers", "3-1"], "--layers"),
    ("sweep", "--multipliers"): (["--multipliers=1,nan"], "--multipliers"),
    ("sweep", "--behaviours"): (["--behaviours", "sycophantic"], "--behaviours"),
    ("sweep", "--tasks"): (["--tasks", "caa_ab_{{nonsense}}"], "--tasks"),
    ("sweep", "--sites"): (["--sites", "resid"], "--sites"),
    ("sweep", "--batch-size"): (["--batch-size", "fast"], "--batch-size"),
    ("sweep", "--shard"): (["--shard", "4/4"], "--shard"),
    ("demo", "--limit"): (["--limit", "0"], "--limit"),
    ("tokens", "--vector"): (["--vector", "{vec}/nope.safetensors"], "--vector"),
    ("tokens", "--layer"): (["--layer", "3"], "--layer"),
    ("tokens", "--prompt"): (["--question", "why?"], "--question"),
    ("tokens", "--question"): (["--question", "why?", "--generate", "2"], "--question"),
    ("tokens", "--generate"): (["--generate", "3"], "--generate"),
    ("tokens", "--scale"): (["--scale", "2"], "--scale"),
    ("similarity layers", "file"): (["similarity", "layers", "{vec}/nope.safetensors", "--csv", "{out}/s.csv"], "file"),
    ("similarity files", "a"): (
        ["similarity", "files", "{vec}/nope.safetensors", VEC, "--csv", "{out}/s.csv"],
        "a: vector file not found",
    ),
    ("similarity files", "b"): (
        ["similarity", "files", VEC, "{vec}/nope.safetensors", "--csv", "{out}/s.csv"],
        "b: vector file not found",
    ),
    ("elicit", "--behavior"): (["--behavior", "sycophancy", "refusal"], "{behavior}"),
    ("elicit", "--vector"): (["--vector", "{vec}/nope.safetensors"], "--vector"),
    ("elicit", "--layer"): (["--layer", "3"], "--layer"),
    ("elicit", "--threshold"): (["--threshold", "1.5"], "--threshold"),
    ("elicit", "--max-multiplier"): (["--max-multiplier", "-5"], "--max-multiplier"),
    ("elicit", "--grid"): (["--grid", "0"], "--grid"),
    ("elicit", "--tolerance"): (["--tolerance", "30"], "--tolerance"),
    ("elicit", "--limit"): (["--limit", "0"], "--limit"),
    ("elicit", "--positions"): (["--positions", "span:4:2"], "--positions"),
    ("elicit", "--batch-size"): (["--batch-size", "0"], "--batch-size"),
    ("elicit", "--device"): (["--device", "gpu"], "--device"),
    ("elicit", "--data-dir"): (["--data-dir", "{out}/nope"], "--data-dir"),
    ("elicit", "--resamples"): (["--resamples", "10"], "--resamples"),
    ("calibrate", "--vector"): (["--vector", VEC, "{vec}/nope.safetensors"], "--vector"),
    ("calibrate", "--layer"): (["--layer", "-1"], "--layer"),
    ("calibrate", "--kl"): (["--kl", "0"], "--kl"),
    ("calibrate", "--tolerance"): (["--tolerance", "1"], "--tolerance"),
    ("calibrate", "--max-multiplier"): (["--max-multiplier", "0"], "--max-multiplier"),
    ("calibrate", "--multipliers"): (["--multipliers=1,x"], "--multipliers"),
    ("calibrate", "--positions"): (["--positions", "everywhere"], "--positions"),
    ("calibrate", "--prompts"): (["--prompts", "{pairs}/empty_list.json"], "--prompts"),
    ("finetune", "--behavior"): (["--behavior", "sycophantic"], "sycophantic"),
    ("finetune", "--data"): (
        ["finetune", "--model", "{tiny}", "--data", "{pairs}/nope.json", "--direction", "pos", "--out", "{out}/ft"],
        "--data",
    ),
    ("finetune", "--out"): (["--out", "{vec}"], "--out"),
    ("finetune", "--epochs"): (["--epochs", "0"], "--epochs"),
    ("finetune", "--lr"): (["--lr", "0"], "--lr"),
    ("finetune", "--lora-r"): (["--lora-r", "0"], "--lora-r"),
    ("finetune", "--lora-alpha"): (["--lora-alpha", "-1"], "--lora-alpha"),
    ("finetune", "--batch-size"): (["--batch-size", "0"], "--batch-size"),
    ("finetune", "--max-steps"): (["--max-steps", "0"], "--max-steps"),
    ("finetune", "--holdout-fraction"): (["--holdout-fraction", "1"], "--holdout-fraction"),
    ("finetune", "--target-shift"): (["--target-shift", "0"], "--target-shift"),
    ("finetune", "--eval-every"): (["--eval-every", "0"], "--eval-every"),
    ("finetune", "--seed"): (["--seed", "-1"], "--seed"),
    ("finetune", "--device"): (["--device", "tpu"], "--device"),
    ("finetune", "--data-dir"): (["--data-dir", "{out}/nope"], "--data-dir"),
    ("data download", "--base-url"): (["--base-url", "ftp://mirror"], "--base-url"),
    ("steerability", "input"): (["steerability", "{scores}/nope.csv"], "input"),
    ("steerability", "--metrics"): (["--metrics", ","], "--metrics"),
    ("steerability", "--seed"): (["--seed", "-1"], "--seed"),
    ("steerability", "--n-resamples"): (["--n-resamples", "10"], "--n-resamples"),
    ("reproduce run", "name"): (["reproduce", "run", "ab-9b", "--dry-run"], "unknown experiment 'ab-9b'"),
    ("reproduce run", "--limit"): (["--limit", "0"], "--limit"),
    ("reproduce run", "--vectors"): (["--vectors", "caa", "{out}/nope"], "--vectors"),
    ("reproduce run", "--behaviours"): (["--behaviours", "sycophancy,sycophantic"], "--behaviours"),
    ("reproduce compare", "run_dir"): (
        ["reproduce", "compare", "{scores}/nope.csv", "--reference", "ab-7b"],
        "run_dir",
    ),
    ("reproduce compare", "--reference"): (["--reference", "ab-9b"], "--reference"),
    ("reproduce compare", "--tolerance"): (["--tolerance", "-0.1"], "--tolerance"),
    ("reproduce compare", "--seed"): (["--seed", "-1"], "--seed"),
}


def _rows() -> list[tuple[str, str, Rule | None]]:
    return [
        row for command, (module, _) in COMMANDS.items() if command != "eval" for row in command_rows(command, module)
    ]


def _refusable(rule: Rule) -> bool:
    return rule.where != "nothing to refuse"


def _auto_cases() -> dict[tuple[str, str], tuple[list[str], str]]:
    """Bad values the parser's own declarations give: a wrong choice, a file where a folder goes and back."""
    cases = {}
    for command, arg, rule in _rows():
        if rule is None or command not in BASE:
            continue
        if rule.where == "argparse (usage error)" and rule.rule.startswith("one of "):
            cases[(command, arg)] = ([arg, "bogus"], arg)
        elif rule.where == "dispatcher (OUTPUTS)":
            cases[(command, arg + "#out")] = ([arg, "{vec}" if "file" in rule.rule else "{file}"], arg)
    return cases


CASES = {**_auto_cases(), **BAD}


def _argv(command: str, bad: list[str]) -> list[str]:
    word = command.split()[0]
    return bad if bad and bad[0] == word else [*BASE[command], *bad]


class _Loaded(AssertionError):
    """A loader or the command's run() was called before the argument was refused."""


@pytest.fixture
def no_loading(monkeypatch):
    """Every loader raises: a refusal that comes after any of them fails the test with its name."""
    import transformers

    import caa_eval.core.vectors
    import caa_eval.data
    import caa_eval.models

    def refuse(what):
        def loader(*a, **k):
            raise _Loaded(f"{what} was called before the bad argument was refused")

        return loader

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.AutoModel):
        monkeypatch.setattr(cls, "from_pretrained", refuse(f"{cls.__name__}.from_pretrained"))
    monkeypatch.setattr(caa_eval.models, "load_model", refuse("caa_eval.models.load_model"))
    monkeypatch.setattr(caa_eval.core.vectors, "load", refuse("caa_eval.core.vectors.load (a vector load)"))
    monkeypatch.setattr(caa_eval.data, "load_contrast_pairs", refuse("caa_eval.data.load_contrast_pairs"))
    for command, (module_name, _) in COMMANDS.items():
        module = importlib.import_module(f"caa_eval.cli.{module_name}")
        monkeypatch.setattr(module, "run", refuse(f"`caa-eval {command}`'s run()"))


def test_every_argument_has_a_rule():
    missing = [f"{command} {arg}" for command, arg, rule in _rows() if rule is None]
    assert not missing, f"arguments without a rule (declare them in the module's ARGUMENTS): {missing}"


def test_every_refusable_row_has_a_case():
    need = {(c, a) for c, a, r in _rows() if r is not None and _refusable(r) and r.before_load}
    have = {(c, a.split("#")[0]) for c, a in CASES}
    assert not need - have, f"rows without a bad value in BAD: {sorted(need - have)}"
    assert not have - {(c, a) for c, a, _ in _rows()}, (
        f"cases for no row: {sorted(have - {(c, a) for c, a, _ in _rows()})}"
    )
    after = {(c, a) for c, a, r in _rows() if r is not None and not r.before_load}
    assert not after - set(AFTER_LOAD) - set(UNTESTED_AFTER_LOAD), sorted(after - set(AFTER_LOAD))


@pytest.mark.parametrize("command", sorted(BASE))
def test_base_argv_reaches_run(command, env, no_loading):
    """The good argv passes every rule, so each bad case is refused for its one bad value."""
    from caa_eval import cli as caa_cli

    with pytest.raises(_Loaded, match="run()"):
        caa_cli.main([env.fmt(a) for a in BASE[command]])


@pytest.mark.parametrize("key", sorted(CASES), ids=lambda k: f"{k[0]} {k[1]}")
def test_bad_argument_is_refused_before_anything_loads(key, env, no_loading):
    command, arg = key
    bad, expect = CASES[key]
    argv = _argv(command, bad)
    case = Case(f"arg-{command}-{arg}", "argument range", "caa-eval " + " ".join(argv), arg, cli(*argv), expect)
    check(case, env)  # exit 2, exactly one stderr line (after argparse's usage block), no traceback, nothing written


# ---------------------------------------------------------------------------------------------- after the load

AFTER_LOAD: dict[tuple[str, str], tuple[list[str], str]] = {  # layer 7: in the vector file, not the 4-layer model
    ("tokens", "--layer"): (
        ["tokens", "--model", "{tiny}", "--vector", "{far}", "--layer", "7", "--prompt", "hi"]
        + ["--json", "{out}/t.json", "--html", "{out}/t.html"],
        "--layer 7: the model has layers 0..3",
    ),
    ("calibrate", "--layer"): (
        ["calibrate", "--model", "{tiny}", "--vector", "{far}", "--layer", "7"],
        "--layer 7: the model has layers 0..3",
    ),
    ("extract", "--layers"): (
        [
            "extract",
            "--model",
            "{tiny}",
            "--data",
            "{pairs}/good.json",
            "--layers",
            "7",
            "--out",
            "{out}/v.safetensors",
        ],
        "layers [7] out of range; the model has layers 0..3",
    ),
    ("elicit", "--layer"): (
        ["elicit", "--model", "{tiny}", "--behavior", "sycophancy", "--vector", "{far}", "--layer", "7"]
        + ["--json", "{out}/e.json", "--device", "cpu"],
        "--layer 7: the model has layers 0..3",
    ),
    ("stats", "--split-by"): (
        ["stats", "{scores}/good.csv", "--split-by", "nope"],
        "--split-by 'nope': no such column",
    ),
    ("steerability", "--split-by"): (
        ["steerability", "{scores}/good.csv", "--split-by", "nope"],
        "--split-by 'nope': no such column",
    ),
}
UNTESTED_AFTER_LOAD = {  # rows whose value only the load itself (or the first evaluation) can refuse
    ("extract", "--model"),
    ("calibrate", "--model"),
    ("tokens", "--model"),
    ("elicit", "--model"),
    ("finetune", "--model"),
    ("sweep", "--model"),
    ("reproduce run", "--model"),
    ("judge", "--judge-model"),
    ("elicit", "--task"),
    ("elicit", "--metric"),
    ("parity", "--model"),
    ("parity", "--task"),
}


@pytest.fixture
def far_vector(env, tmp_path_factory):
    """A vector file for layer 7 with the tiny model's hidden size (outside the inputs' folder)."""
    import json

    import torch
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("far") / "far.safetensors"
    meta = {"format": "caa-eval/vector-v1", "behaviour": "sycophancy", "site": "residual", "hidden_size": 32}
    save_file({"layer.7": torch.ones(32)}, str(path), metadata={"format": "pt", "caa_eval": json.dumps(meta)})
    env.paths = {**env.paths, "far": str(path)}
    return path


@pytest.mark.parametrize("key", sorted(AFTER_LOAD), ids=lambda k: f"{k[0]} {k[1]}")
def test_layer_missing_from_the_model_is_refused_before_any_forward_pass(key, env, far_vector, monkeypatch):
    """What needs the model (its depth) or the data (a column) is refused right after that load, in one line."""
    from transformers.models.llama import modeling_llama

    def no_forward(*a, **k):
        raise AssertionError("a forward pass ran before the layer was checked against the model")

    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", no_forward)
    argv, expect = AFTER_LOAD[key]
    case = Case(
        f"after-{key[0]}-{key[1]}",
        "argument range",
        "caa-eval " + " ".join(argv),
        "layer 7",
        cli(*argv, after_load=True),
        expect,
    )
    check(case, env)


@pytest.mark.parametrize(
    "argv", [["calibrate"], ["tokens", "--prompt", "hi"], ["extract", "--out", "{out}/v.safetensors"]]
)
def test_missing_required_flag_is_the_usage_block_and_one_line(argv, env, no_loading):
    """argparse's own usage errors keep the usage block, followed by exactly one error line naming the flag."""
    from _harness import error_lines

    from caa_eval import cli as caa_cli

    with pytest.raises(SystemExit) as exc:
        caa_cli.main([env.fmt(a) for a in argv])
    err = env.capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(f"usage: caa-eval {argv[0]}")
    lines = error_lines(err)
    assert len(lines) == 1 and "required" in lines[0] and "--" in lines[0], err
