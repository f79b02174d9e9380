"""Bad inputs to the other commands: extract (contrast pairs, layers, outputs), stats/report (score tables),
judge (samples, outputs; tests/judge/test_judge.py has the detailed judge tests), sweep configs, output locations."""

from __future__ import annotations

import pytest
from _harness import API, Case, api, check, cli

KEY = "sk-caa-reliability-test"

# ---------------------------------------------------------------------------------------------- extract


def _extract(
    id: str,
    bad: str,
    expect: str,
    *,
    data: str = "{pairs}/good.json",
    out: str = "{out}/v.safetensors",
    extra: tuple[str, ...] = (),
    kind: str = "contrast pairs",
    after_load: bool = False,
) -> Case:
    argv = ("extract", "--model", "{tiny}", "--data", data, "--out", out, "--layers", "1", *extra)
    shown = (
        " ".join(argv)
        .replace("{tiny}", "TINY")
        .replace("{pairs}/", "")
        .replace("{out}/", "OUT/")
        .replace("{file}", "FILE")
        .replace("{readonly}", "RO")
    )
    return Case(id, kind, "caa-eval " + shown, bad, cli(*argv, after_load=after_load), expect)


def _extract_api(env):
    from caa_eval.core.extract import extract_to_file

    extract_to_file(env.paths["tiny"], env.fmt("{pairs}/good.json"), env.fmt("{out}/v.safetensors"), layers="3-1")


EXTRACT_CASES = [
    _extract(
        "extract-non-utf8",
        "Latin-1 encoded pairs",
        "not UTF-8 text (byte 0xe9 on line 1); re-save the file as UTF-8",
        data="{pairs}/latin1.json",
    ),
    _extract(
        "extract-conflict",
        "a pair repeated with the answers swapped",
        "with the answers swapped (a conflicting pair)",
        data="{pairs}/conflict.json",
    ),
    _extract("extract-duplicate", "the same pair twice", "(a duplicate pair)", data="{pairs}/duplicate.json"),
    _extract(
        "extract-jsonl-line", "JSONL with a truncated line 3", "line 3 is not valid JSON", data="{pairs}/badline.jsonl"
    ),
    _extract("extract-missing", "a data file that does not exist", "not found", data="{pairs}/missing.json"),
    _extract("extract-empty", "an empty JSON list", "no items", data="{pairs}/empty_list.json"),
    _extract(
        "extract-field",
        "an item without answer_not_matching_behavior",
        "has no field 'answer_not_matching_behavior'",
        data="{pairs}/nofield.json",
    ),
    _extract("extract-same-letter", "both answers (A)", "same letter", data="{pairs}/sameletter.json"),
    _extract(
        "extract-object",
        "one pretty-printed object instead of a list",
        "holds one JSON object",
        data="{pairs}/object.json",
    ),
    _extract(
        "extract-too-long",
        "a prompt longer than the model's context (was: no warning, a long run)",
        "longer than the model's context of 1024 tokens (longest: item 0",
        data="{pairs}/long.json",
        after_load=True,  # the context length is the model's: refused after the load, before any forward pass
    ),
    _extract(
        "extract-no-label",
        "generate_dataset.json in a folder that is no behaviour (was: folder name recorded)",
        "pass --behaviour-label NAME",
        data="{pairs}/somewhere/generate_dataset.json",
    ),
    _extract(
        "extract-layers-reversed",
        "--layers 3-1",
        "the range 3-1 runs backwards; write 1-3",
        extra=("--layers", "3-1"),
        kind="layer spec",
    ),
    _extract(
        "extract-layers-empty",
        "--layers '' (an empty range)",
        "names no layer",
        extra=("--layers", ""),
        kind="layer spec",
    ),
    _extract(
        "extract-layers-range",
        "--layers 7 on a 4-layer model",
        "layers [7] out of range; the model has layers 0..3",
        extra=("--layers", "7"),
        kind="layer spec",
        after_load=True,  # the model's depth: refused right after the load, before any forward pass
    ),
    _extract("extract-batch", "--batch-size 0", "--batch-size 0: must be >= 1", extra=("--batch-size", "0")),
    _extract("extract-site", "--site resid", "invalid choice: 'resid'", extra=("--site", "resid")),
    _extract(
        "extract-out-suffix", "--out v.pt", "use a .safetensors file name", out="{out}/v.pt", kind="output location"
    ),
    _extract(
        "extract-out-under-file",
        "--out under a file",
        "is a file, not a folder",
        out="{file}/v.safetensors",
        kind="output location",
    ),
    _extract(
        "extract-out-readonly",
        "--out in a folder nobody may write",
        "cannot write --out",
        out="{readonly}/v.safetensors",
        kind="output location",
    ),
    _extract(
        "extract-out-folder",
        "--out names an existing folder",
        "is a folder; pass a file path",
        out="{out}",
        kind="output location",
    ),
    Case(
        "extract-model",
        "model",
        "caa-eval extract --model ./no-such-model …",
        "a model path that does not exist",
        cli(
            "extract", "--model", "{root}/no-such-model", "--data", "{pairs}/good.json", "--out", "{out}/v.safetensors"
        ),
        "cannot load model",
    ),
    Case(
        "extract-behaviour",
        "contrast pairs",
        "caa-eval extract --behaviour sycophantic …",
        "an unknown behaviour name",
        cli("extract", "--model", "{tiny}", "--behaviour", "sycophantic", "--out", "{out}/v.safetensors"),
        "unknown behaviour 'sycophantic'",
    ),
    Case(
        "extract-api-layers",
        "layer spec",
        "extract_to_file(..., layers='3-1')",
        "a reversed range via the Python API",
        api(_extract_api),
        "the range 3-1 runs backwards",
        API,
    ),
]


@pytest.mark.parametrize("case", EXTRACT_CASES, ids=lambda c: c.id)
def test_extract(case, env):
    check(case, env)


# ---------------------------------------------------------------------------------------------- stats / report


def _stats(
    id: str, name: str, bad: str, expect: str, *extra: str, command: str = "stats", kind: str = "score table"
) -> Case:
    argv = (command, "{scores}/" + name, *extra)
    return Case(
        id,
        kind,
        f"caa-eval {command} {name} {' '.join(extra)}".strip()
        .replace("{scores}/", "")
        .replace("{out}/", "OUT/")
        .replace("{file}", "FILE")
        .replace("{readonly}", "RO"),
        bad,
        cli(*argv),
        expect,
    )


STATS_CASES = [
    _stats("stats-empty", "empty.csv", "an empty file", "the file is empty; write a header line"),
    _stats("stats-header-only", "header_only.csv", "a header and no rows", "the table has no rows"),
    _stats("stats-columns", "columns.csv", "other columns", "missing column(s) item_id, behaviour, multiplier, score"),
    _stats("stats-non-utf8", "latin1.csv", "a Latin-1 CSV", "not a readable CSV"),
    _stats("stats-jsonl-line", "badline.jsonl", "a JSONL with a broken line 2", "line 2 is not valid JSON"),
    _stats("stats-empty-folder", "emptydir", "a folder without samples", "no per-item scores found"),
    _stats("stats-missing", "missing.csv", "a file that does not exist", "no such file"),
    _stats(
        "stats-no-baseline",
        "nobase.csv",
        "steered rows without multiplier 0",
        "no multiplier-0 baseline",
        "--json",
        "{scores}/stats.json",
    ),
    _stats(
        "stats-huge",
        "huge.csv",
        "scores around 1e300 (was: overflowed sums, wrong dz)",
        "is beyond ±1e+100",
        "--json",
        "{scores}/stats.json",
    ),
    _stats("stats-multiplier", "badmult.csv", "multiplier 'strong'", "multiplier ['strong'] is not a finite number"),
    _stats("stats-duplicate", "dup.csv", "one item twice in a cell", "appears 2 times in cell"),
    _stats("stats-resamples", "good.csv", "--n-resamples 5", "--n-resamples 5: must be >= 100", "--n-resamples", "5"),
    _stats(
        "stats-json-under-file",
        "good.csv",
        "--json under a file",
        "is a file, not a folder",
        "--json",
        "{file}/s.json",
        kind="output location",
    ),
    _stats(
        "stats-json-folder", "good.csv", "--json names a folder", "--json", "--json", "{out}", kind="output location"
    ),
    _stats(
        "stats-csv-readonly",
        "good.csv",
        "--csv in a folder nobody may write",
        "cannot write --csv",
        "--csv",
        "{readonly}/s.csv",
        kind="output location",
    ),
    _stats("report-empty", "empty.csv", "an empty file", "the file is empty", command="report"),
    _stats("report-empty-folder", "emptydir", "a folder without samples", "no per-item scores found", command="report"),
    _stats(
        "report-out-file",
        "good.csv",
        "--out is a file",
        "is a file; pass a folder path",
        "--out",
        "{file}",
        command="report",
        kind="output location",
    ),
]


@pytest.mark.parametrize("case", STATS_CASES, ids=lambda c: c.id)
def test_stats_and_report(case, env):
    check(case, env)


# ---------------------------------------------------------------------------------------------- judge


def _judge(id: str, bad: str, expect: str, *argv: str, kind: str = "judge input", after_calls: bool = False) -> Case:
    shown = (
        " ".join(argv).replace("{judge}/", "").replace("{file}", "FILE").replace("{out}", "OUT").replace("{root}/", "")
    )
    # after_calls: the failure shows only once the judge was called; its progress bar may precede the line
    return Case(id, kind, f"caa-eval judge {shown}", bad, cli("judge", *argv, after_load=after_calls), expect)


JUDGE_CASES = [
    _judge(
        "judge-ab-only",
        "a folder with only A/B samples (was: paid calls on log-likelihoods)",
        "no samples to judge",
        "{judge}/ab_only",
        "--no-cache",
    ),
    _judge(
        "judge-all-500",
        "a server that always answers 500 (was: exit 0, nothing scored)",
        "all 3 items failed (3 without a reply",
        "{judge}/all500",
        "--no-cache",
        "--max-retries",
        "0",
        after_calls=True,
    ),
    _judge(
        "judge-html",
        "a server that answers every request with an HTML login page",
        "not a chat completion",
        "{judge}/html",
        "--no-cache",
        "--max-retries",
        "0",
        after_calls=True,
    ),
    _judge("judge-no-input", "no folder given", "no input; pass an lm-eval output folder"),
    _judge(
        "judge-cache-flags",
        "--cache and --no-cache together",
        "contradict each other",
        "{judge}/fine",
        "--no-cache",
        "--cache",
        "{out}/c.sqlite",
    ),
    _judge("judge-missing", "a folder that does not exist", "no such file", "{root}/nothing-here", "--no-cache"),
    _judge(
        "judge-rubrics",
        "--rubrics file that does not exist",
        "not found",
        "{judge}/fine",
        "--no-cache",
        "--rubrics",
        "{root}/no-rubrics.yaml",
    ),
    _judge(
        "judge-out-under-file",
        "--output-dir under a file (was: OSError after the paid calls)",
        "is a file",
        "{judge}/fine",
        "--no-cache",
        "--output-dir",
        "{file}/judged",
        kind="output location",
    ),
    _judge(
        "judge-summary-folder",
        "--summary-json names a folder",
        "is a folder",
        "{judge}/fine",
        "--no-cache",
        "--summary-json",
        "{out}",
        kind="output location",
    ),
]


@pytest.fixture(scope="module")
def judge_server():
    from tests.helpers.fake_openai_server import serve

    with serve(latency=0.0, api_key=KEY, lifetime=600) as srv:
        yield srv


@pytest.mark.parametrize("case", JUDGE_CASES, ids=lambda c: c.id)
def test_judge(case, env, judge_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", judge_server.base_url)
    judge_server.reset()
    check(case, env)
    calls = judge_server.stats()["requests"]
    assert calls == (3 if case.id in ("judge-all-500", "judge-html") else 0), (
        f"{calls} paid calls"
    )  # refused inputs cost nothing


# ---------------------------------------------------------------------------------------------- sweep configs


def _sweep(id: str, name: str, bad: str, expect: str, *extra: str, kind: str = "sweep config") -> Case:
    argv = ("sweep", "{sweep}/configs/" + name, *extra)
    return Case(
        id, kind, f"caa-eval sweep {name} {' '.join(extra)}".strip().replace("{file}", "FILE"), bad, cli(*argv), expect
    )


SWEEP_CASES = [
    _sweep(
        "sweep-device",
        "device_gpu.yaml",
        "device: gpu (was: ran on CPU, recorded 'gpu')",
        "key 'device': 'gpu' is not a device",
    ),
    _sweep("sweep-device-absent", "device_cuda3.yaml", "device: cuda:3 on a machine without it", "device 'cuda:3'"),
    _sweep("sweep-typo", "typo.yaml", "key `multiplers`", "multiplers"),
    _sweep("sweep-mult-nan", "mult_nan.yaml", "multipliers: [-1, .nan]", "key 'multipliers'"),
    _sweep("sweep-layers", "layers_reversed.yaml", "layers: '14-12'", "key 'layers': '14-12' is not a layer; use e.g."),
    _sweep("sweep-behaviour", "behaviour.yaml", "behaviours: [sycophantic]", "sycophantic"),
    _sweep("sweep-batch", "batch.yaml", "batch_size: fast", "key 'batch_size': 'fast' is not a positive integer"),
    _sweep("sweep-site", "site.yaml", "sites: [resid]", "key 'sites'"),
    _sweep("sweep-syntax", "syntax.yaml", "a YAML syntax error", "is not valid YAML"),
    _sweep("sweep-list", "list.yaml", "a YAML list instead of a mapping", "expected a mapping of keys"),
    _sweep("sweep-empty", "empty.yaml", "an empty config file", "the file is empty"),
    _sweep("sweep-missing", "missing.yaml", "a config file that does not exist", "not found"),
    _sweep(
        "sweep-output-file",
        "output_file.yaml",
        "output: under a file (was: NotADirectoryError traceback)",
        "is a file, not a folder",
        kind="output location",
    ),
    _sweep(
        "sweep-output-readonly",
        "output_readonly.yaml",
        "output: in a folder nobody may write",
        "cannot write output",
        kind="output location",
    ),
    _sweep(
        "sweep-out-flag", "good.yaml", "--out under a file", "is a file", "--out", "{file}/run", kind="output location"
    ),
]


@pytest.mark.parametrize("case", SWEEP_CASES, ids=lambda c: c.id)
def test_sweep_config(case, env):
    check(case, env)


# ---------------------------------------------------------------------------------------------- other outputs


OUTPUT_CASES = [
    Case(
        "import-out-file",
        "output location",
        "caa-eval import-caa DIR --out-dir FILE",
        "--out-dir is a file",
        cli("import-caa", "{vec}/caa", "--out-dir", "{file}"),
        "--out-dir",
    ),
    Case(
        "normalize-out-under-file",
        "output location",
        "caa-eval normalize A B --out-dir FILE/x",
        "--out-dir under a file",
        cli("normalize", "{vec}/good.safetensors", "{vec}/fingerprint.safetensors", "--out-dir", "{file}/x"),
        "is a file, not a folder",
    ),
    Case(
        "tokens-json-under-file",
        "output location",
        "caa-eval tokens … --json FILE/t.json",
        "--json under a file",
        cli(
            "tokens",
            "--model",
            "{tiny}",
            "--vector",
            "{vec}/good.safetensors",
            "--layer",
            "1",
            "--prompt",
            "Hi",
            "--json",
            "{file}/t.json",
            "--html",
            "{out}/t.html",
        ),
        "cannot write --json",
    ),
    Case(
        "tokens-html-readonly",
        "output location",
        "caa-eval tokens … --html RO/t.html",
        "--html in a folder nobody may write",
        cli(
            "tokens",
            "--model",
            "{tiny}",
            "--vector",
            "{vec}/good.safetensors",
            "--layer",
            "1",
            "--prompt",
            "Hi",
            "--json",
            "{out}/t.json",
            "--html",
            "{readonly}/t.html",
        ),
        "cannot write --html",
    ),
    Case(
        "similarity-csv-folder",
        "output location",
        "caa-eval similarity layers V --csv OUT",
        "--csv names a folder",
        cli("similarity", "layers", "{vec}/good.safetensors", "--csv", "{out}"),
        "--csv",
    ),
    Case(
        "calibrate-markdown-under-file",
        "output location",
        "caa-eval calibrate … --markdown FILE/c.md",
        "--markdown under a file",
        cli(
            "calibrate",
            "--model",
            "{tiny}",
            "--vector",
            "{vec}/good.safetensors",
            "--layer",
            "1",
            "--markdown",
            "{file}/c.md",
        ),
        "cannot write --markdown",
    ),
    Case(
        "finetune-out-file",
        "output location",
        "caa-eval finetune … --out FILE",
        "--out (adapter folder) is a file",
        cli("finetune", "--model", "{tiny}", "--data", "{pairs}/good.json", "--direction", "pos", "--out", "{file}"),
        "is a file; pass a folder path",
    ),
]


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=lambda c: c.id)
def test_output_location(case, env):
    check(case, env)
