"""`caa-eval sweep`: config parsing and validation, the cell plan, one-process runs on the tiny model
(model loaded once per condition, lm-eval's own file formats, report at the end), resuming after an
interruption without recomputing finished cells, the CLI end to end (SIGINT, then rerun), CAA's mean-norm
normalisation as the default for CAA behaviours (opt-out with normalize: false), and the device check."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caa_eval import cli, sweep
from caa_eval.cli import sweep as sweep_cli
from caa_eval.errors import CAAEvalError
from tests.helpers.sweep_data import BEHAVIOURS, base_keys, write_caa_layout, write_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

# ---------------------------------------------------------------------------------------------- helpers


class LoadCounter:
    """Counts SteeredHFLM constructions (model loads) without changing what they do."""

    def __init__(self, monkeypatch):
        from caa_eval.lmeval.model import SteeredHFLM

        self.calls: list[str] = []
        original = SteeredHFLM.__init__
        counter = self

        def counting_init(self, *args, **kwargs):
            counter.calls.append(str(kwargs.get("pretrained")))
            original(self, *args, **kwargs)

        monkeypatch.setattr(SteeredHFLM, "__init__", counting_init)


def cell_means(run_dir: Path) -> dict[tuple, float]:
    report = json.loads((run_dir / "report" / "report.json").read_text())
    return {(c["behaviour"], c["task"], c["layer"], c["multiplier"]): c["mean"] for c in report["cells"]}


def done_mtimes(run_dir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (run_dir / "cells").glob("*/DONE")}


@pytest.fixture(scope="module")
def caa_dir(tmp_path_factory) -> Path:
    return write_caa_layout(tmp_path_factory.mktemp("caa_data"))


@pytest.fixture()
def caa_env(caa_dir, monkeypatch):
    monkeypatch.setenv("CAA_EVAL_DATA_DIR", str(caa_dir))
    return caa_dir


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, caa_dir, tmp_path_factory):
    """An uninterrupted 2 behaviours x 2 layers x {-1, 0, 1} sweep, with model loads counted."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CAA_EVAL_DATA_DIR", str(caa_dir))
    try:
        counter = LoadCounter(mp)
        tmp = tmp_path_factory.mktemp("full")
        cfg = sweep.load_config(write_config(tmp / "sweep.yaml", **base_keys(tiny_model_dir, tmp / "run")))
        lines: list[str] = []
        result = sweep.run_sweep(cfg, progress=False, print_fn=lines.append)
    finally:
        mp.undo()
    return result, counter.calls, lines, cfg


# ---------------------------------------------------------------------------------------------- config


def test_example_configs_parse_and_plan():
    cfg = sweep.load_config(EXAMPLES / "sweep_smollm2.yaml")
    assert cfg.model == "smollm2-135m-instruct" and len(cfg.behaviours) == 7 and cfg.normalize
    assert cfg.layers == [[13]] and cfg.multipliers == [-1.0, 0.0, 1.0]
    cells = sweep.plan_cells(cfg)
    baselines = [c for c in cells if c.is_baseline]
    # one baseline per task: 7 A/B tasks + one shared MMLU run; steered: 7 behaviours x 2 multipliers
    assert len(baselines) == 8 and len(cells) == 8 + 14
    mmlu = next(c for c in baselines if c.tasks == ["caa_mmlu_2opt"])
    assert mmlu.behaviour is None  # stats reads it as the shared '*' baseline of every vector
    ab = next(c for c in baselines if c.tasks == ["caa_ab_coordinate_other_ais"])
    assert ab.behaviour is None  # an A/B task's unsteered run too: the baseline of every vector on that task
    steered = next(c for c in cells if c.behaviour == "corrigible-neutral-HHH" and c.multiplier == -1)
    assert steered.tasks == ["caa_ab_corrigible_neutral_HHH", "caa_mmlu_2opt"]
    assert steered.id == "corrigible-neutral-HHH__base__L13__residual__after_instruction__m-1"
    assert steered.vector.endswith("vectors_normalized/corrigible-neutral-HHH.safetensors")
    tiny = sweep.load_config(EXAMPLES / "sweep_tiny.yaml")
    assert tiny.behaviours[0].custom and tiny.behaviours[0].ab_test.is_file() and tiny.limit == 4
    transfer = sweep.load_config(EXAMPLES / "sweep_transfer_smollm2.yaml")
    cells = sweep.plan_cells(transfer)
    assert transfer.vector_layer == 13 and len(transfer.layers) == 15
    assert sum(c.is_baseline for c in cells) == 7 and len(cells) == 7 + 7 * 15 * 4
    assert {c.vector_layer for c in cells if not c.is_baseline} == {13}


def test_cli_flags_override_config_keys(tmp_path):
    path = write_config(tmp_path / "s.yaml", **base_keys(Path("m"), tmp_path / "run"))
    args = argparse.ArgumentParser()
    sweep_cli.configure(args)
    ns = args.parse_args(
        [
            str(path),
            "--layers",
            "3-5",
            "7",
            "--multipliers=-2,0.5",
            "--behaviours",
            "refusal",
            "--tasks",
            "caa_ab_{behaviour},caa_mmlu_2opt",
            "--limit",
            "5",
            "--out",
            "elsewhere",
        ]
    )
    cfg = sweep.load_config(path, sweep_cli.overrides(ns))
    assert cfg.layers == [[3], [4], [5], [7]]
    assert cfg.multipliers == [-2.0, 0.0, 0.5]  # 0 is always added
    assert [b.name for b in cfg.behaviours] == ["refusal"]
    assert cfg.tasks == ["caa_ab_{behaviour}", "caa_mmlu_2opt"] and cfg.limit == 5
    assert cfg.output == Path.cwd() / "elsewhere"
    ns = args.parse_args([str(path), "--multipliers", "-1", "1"])  # negative numbers as separate words work too
    assert sweep.load_config(path, sweep_cli.overrides(ns)).multipliers == [-1.0, 0.0, 1.0]


def test_joint_layers_and_cell_ids_are_readable_and_unique(tmp_path):
    cfg = sweep.config_from_dict(
        {
            "model": "m",
            "behaviours": ["sycophancy"],
            "layers": [13, [10, 12]],
            "multipliers": [-0.5, 2],
            "sites": ["residual", "mlp"],
            "positions": ["after_instruction", "regex:\\d+"],
            "conditions": [{"name": "base"}, {"name": "sys", "system_instruction": "Be brief."}],
        },
        base=tmp_path,
    )
    cells = sweep.plan_cells(cfg)
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids))
    assert "sycophancy__sys__L10+12__mlp__after_instruction__m-0.5" in ids
    assert sum(c.is_baseline for c in cells) == 2 * 2  # (A/B + MMLU) per condition
    assert all("/" not in i and " " not in i for i in ids)
    mlp = next(c for c in cells if c.site == "mlp")
    assert mlp.vector.endswith("sycophancy.mlp.safetensors")
    assert next(c for c in cells if c.layer == [10, 12]).cell_json()["layer"] == [10, 12]


@pytest.mark.parametrize(
    "keys, needle",
    [
        ({"layer": [13]}, "unknown key 'layer'; did you mean 'layers'"),
        ({"multipliers": [1, "big"]}, "key 'multipliers': 'big' is not a number"),
        ({"behaviours": ["sycophancy", "flattery"]}, "key 'behaviours': unknown CAA behaviour 'flattery'"),
        ({"behaviours": ["sycophancy"], "normalize": True}, "key 'normalize': mean-norm rescaling needs at least two"),
        ({"sites": ["resid"]}, "key 'sites': site='resid' not understood"),
        ({"positions": ["everywhere"]}, "key 'positions'"),
        ({"limit": -3}, "key 'limit'"),
        ({"layers": []}, "key 'layers'"),
        ({"layers": ["a-b"]}, "key 'layers'"),
        ({"tasks": ["caa_ab_{behavior}"]}, "key 'tasks': template 'caa_ab_{behavior}' is not valid"),
        ({"conditions": [{"name": "a"}, {"name": "a"}]}, "key 'conditions': 'a' is listed twice"),
        (
            {"conditions": [{"name": "a", "adapter": "x"}]},
            "key 'conditions': entry 'a' has unknown field(s) ['adapter']",
        ),
        ({"behaviours": [{"name": "mine", "pairs": "nope.json"}]}, "key 'behaviours': mine: pairs file"),
        ({"behaviours": [{"name": "mine"}]}, "'mine' is not a CAA behaviour and has no pairs file"),
        ({"judge": {"backend": "claude"}}, "key 'judge.backend'"),
        ({"batch_size": 0}, "key 'batch_size'"),
        ({"device": "gpu"}, "key 'device': 'gpu' is not a device; write one of cpu, cuda, cuda:N, mps, auto"),
        ({"device": "cuda0"}, "key 'device'"),
        ({"normalize": "yes"}, "key 'normalize': 'yes' is not true/false"),
        ({"model": None}, "key 'model': missing"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, keys, needle):
    raw = {"model": "m", "behaviours": ["sycophancy", "refusal"], "layers": [13], "multipliers": [1]}
    raw.update(keys)
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(CAAEvalError) as exc:
        sweep.config_from_dict(raw, source="s.yaml", base=tmp_path)
    message = str(exc.value)
    assert needle in message and "\n" not in message and message.startswith("s.yaml")


def test_normalize_defaults_to_caa_when_two_or_more_caa_behaviours_are_swept(tmp_path):
    def config(**keys):
        raw = {"model": "m", "behaviours": ["sycophancy", "refusal"], "layers": [13], "multipliers": [1], **keys}
        return sweep.config_from_dict(raw, source="s.yaml", base=tmp_path, default_output=tmp_path / "run")

    caa = config()
    assert caa.normalize and caa.normalize_by_default and sweep.config.normalize_warning(caa) is None
    assert all(
        Path(c.vector).parent == tmp_path / "run" / "vectors_normalized" for c in sweep.plan_cells(caa) if c.vector
    )
    for opt_out in (config(normalize=False), config(vectors={"normalize": False}), config(normalise=False)):
        assert not opt_out.normalize and not opt_out.normalize_by_default
        assert all(Path(c.vector).parent == opt_out.vectors_folder for c in sweep.plan_cells(opt_out) if c.vector)
    assert config(normalize=True).normalize
    # the user's own pairs (even under a CAA name) are not CAA's vectors: no rescaling unless asked
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("")
    own = config(behaviours=[{"name": "agree", "pairs": str(pairs)}, {"name": "sycophancy", "pairs": str(pairs)}])
    assert not own.normalize and own.normalize_by_default and sweep.config.normalize_warning(own) is None
    assert config(behaviours=["sycophancy", "refusal", {"name": "agree", "pairs": str(pairs)}]).normalize
    # one CAA behaviour cannot be normalised across behaviours: raw vectors, and a one-line warning saying so
    single = config(behaviours=["sycophancy"])
    warning = sweep.config.normalize_warning(single)
    assert not single.normalize and "\n" not in warning
    assert "one CAA behaviour (sycophancy)" in warning and "multipliers are on the raw scale" in warning
    assert sweep.config.normalize_warning(config(behaviours=["sycophancy"], normalize=False)) is None


def test_single_caa_behaviour_sweep_logs_the_raw_scale_warning(tmp_path, tiny_model_dir, caa_env, caplog):
    cfg = sweep.load_config(
        write_config(tmp_path / "s.yaml", **base_keys(tiny_model_dir, tmp_path / "run", behaviours=["sycophancy"]))
    )
    lines: list[str] = []
    with caplog.at_level("WARNING", logger="caa_eval.sweep"):
        sweep.run_sweep(cfg, dry_run=True, print_fn=lines.append)
    warnings = [r.getMessage() for r in caplog.records if "CAA behaviour" in r.getMessage()]
    assert len(warnings) == 1 and "raw scale" in warnings[0] and "\n" not in warnings[0]
    assert "vectors raw" in "\n".join(lines)


def test_normalize_false_steers_with_the_raw_vectors(full_run, tmp_path, tiny_model_dir, caa_env):
    raw_dir = full_run[0].run_dir / "vectors"  # reuse the extracted raw files: no extraction here
    keys = base_keys(
        tiny_model_dir,
        tmp_path / "run",
        layers=[1],
        multipliers=[1],
        limit=2,
        report=False,
        vectors={"dir": str(raw_dir)},
        normalize=False,
    )
    result = sweep.run_sweep(
        sweep.load_config(write_config(tmp_path / "s.yaml", **keys)), progress=False, print_fn=lambda s: None
    )
    from caa_eval.core import vectors

    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["normalize"]["used"] is False and manifest["normalize"]["by_default"] is False
    assert not (result.run_dir / "vectors_normalized").exists()
    steered = [c for c in result.cells if not c.is_baseline]
    assert len(steered) == 2
    for c in steered:
        raw = vectors.load(raw_dir / f"{c.behaviour}.safetensors")
        steering = json.loads((result.run_dir / "cells" / c.id / "cell.json").read_text())["steering_config"]
        assert Path(c.vector) == raw_dir / f"{c.behaviour}.safetensors"
        assert steering["vector_sha256"] == raw.sha256() and not steering["normalization"]


def test_unknown_or_absent_device_is_refused_in_one_line(tmp_path, tiny_model_dir, caa_env, monkeypatch, capsys):
    path = write_config(tmp_path / "gpu.yaml", **base_keys(tiny_model_dir, tmp_path / "run", device="gpu"))
    assert cli.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0 and "key 'device': 'gpu' is not a device; write one of cpu, cuda, cuda:N, mps, auto" in err
    )
    # a well-formed name of a GPU that is not there would make lm-eval fall back to the CPU: refused too
    counter = LoadCounter(monkeypatch)
    cfg = sweep.load_config(
        write_config(tmp_path / "s.yaml", **base_keys(tiny_model_dir, tmp_path / "run", device="cuda:99"))
    )
    with pytest.raises(
        CAAEvalError,
        match=r"device 'cuda:99': (no CUDA GPU is available|only cuda:0\.\.cuda:\d+ exist); "
        r"use the device cpu \(or auto\)",
    ):
        sweep.run_sweep(cfg, progress=False, print_fn=lambda s: None)
    assert counter.calls == [] and not (tmp_path / "run").exists()


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model: m\nbehaviours: [sycophancy]\nlayers: [13]\nmultipliers: [x]\n")
    assert cli.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "key 'multipliers'" in err
    path.write_text("model: [unclosed\n")
    assert cli.main(["sweep", str(path)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert cli.main(["sweep", str(tmp_path / "missing.yaml")]) == 2


def test_unknown_task_is_reported_before_any_model_load(tmp_path, tiny_model_dir, caa_env, monkeypatch):
    counter = LoadCounter(monkeypatch)
    cfg = sweep.load_config(
        write_config(
            tmp_path / "s.yaml", **base_keys(tiny_model_dir, tmp_path / "run", tasks=["caa_ab_{behaviour}", "caa_mmlu"])
        )
    )
    with pytest.raises(CAAEvalError, match="key 'tasks': task 'caa_mmlu' .* not found; did you mean 'caa_mmlu_2opt'"):
        sweep.run_sweep(cfg, progress=False, print_fn=lambda s: None)
    assert counter.calls == []


# ---------------------------------------------------------------------------------------------- runs


def test_sweep_writes_every_cell_in_lm_eval_format_and_the_report(full_run):
    result, loads, lines, cfg = full_run
    run = result.run_dir
    assert loads == [str(cfg.model)]  # one model load for the whole sweep (extraction included)
    cells = sweep.plan_cells(cfg)
    assert len(cells) == 2 + 2 * 2 * 2 and sorted(result.ran) == sorted(c.id for c in cells)
    for c in cells:
        folder = run / "cells" / c.id
        assert (folder / "DONE").is_file(), c.id
        info = json.loads((folder / "cell.json").read_text())
        assert {k: info[k] for k in ("behaviour", "condition", "multiplier", "tasks")} == {
            "behaviour": c.behaviour,
            "condition": "base",
            "multiplier": c.multiplier,
            "tasks": c.tasks,
        }
        results = json.loads(next(folder.glob("results_*.json")).read_text())
        args = results["config"]["model_args"]
        assert args["pretrained"] == str(cfg.model) and args["condition"] == "base"
        if not c.is_baseline:
            assert args["multiplier"] == c.multiplier and args["layers"] == c.layer and args["vector"] == c.vector
            assert results["config"]["steering"]["multiplier"] == c.multiplier
        stamp = next(folder.glob("results_*.json")).name[len("results_") : -len(".json")]
        samples = (folder / f"samples_{c.tasks[0]}_{stamp}.jsonl").read_text().splitlines()
        assert len(samples) == 6 and {"doc_id", "p_match", "resps"} <= set(json.loads(samples[0]))
    assert not (run / ".partial").exists() or not any((run / ".partial").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["versions"]["lm_eval"] and manifest["versions"]["torch"] and manifest["versions"]["transformers"]
    assert manifest["versions"]["caa-eval"] and len(manifest["model_fingerprint"]) == 64
    assert manifest["config"]["layers"] == [[1], [2]] and manifest["runs"][-1]["status"] == "complete"
    assert manifest["started"] and manifest["ended"] and all(c["done"] for c in manifest["cells"])
    assert set(manifest["vectors"]) == {"sycophancy/residual", "refusal/residual"}
    # two CAA behaviours and no `normalize` key: CAA's mean-norm vectors are what the cells add
    assert manifest["normalize"] == {"used": True, "by_default": True, "caa_behaviours": list(BEHAVIOURS), "note": None}
    from caa_eval.core import vectors

    raw = {b: vectors.load(run / "vectors" / f"{b}.safetensors") for b in BEHAVIOURS}
    used = {b: vectors.load(run / "vectors_normalized" / f"{b}.safetensors") for b in BEHAVIOURS}
    for layer in (1, 2):
        raw_norms = [float(v.vectors[layer].norm()) for v in raw.values()]
        assert abs(raw_norms[0] - raw_norms[1]) > 0.01 * max(raw_norms)  # else rescaling would prove nothing
        for v in used.values():
            assert float(v.vectors[layer].norm()) == pytest.approx(sum(raw_norms) / 2, rel=1e-5)
    for c in cells:
        if not c.is_baseline:
            steering = json.loads((run / "cells" / c.id / "cell.json").read_text())["steering_config"]
            assert steering["vector_sha256"] == used[c.behaviour].sha256() != raw[c.behaviour].sha256()
            assert steering["normalization"]["method"] == "caa_mean_norm"
    report = json.loads((run / "report" / "report.json").read_text())
    steered = [c for c in report["cells"] if not c["is_baseline"]]
    assert len(steered) == 8 and report["correction"]["n_tests"] == 8
    assert {c["baseline_layer"] for c in steered} == {""}  # the one multiplier-0 run serves every layer
    assert any(line.startswith("report: ") for line in lines)
    assert any("steered cells differ significantly" in line for line in lines)
    assert any("| behaviour | layer | -1 | 0 | +1 |" in line for line in lines)


def test_rerun_skips_everything_and_changed_settings_are_refused(full_run, monkeypatch, caa_env):
    result, _, _, cfg = full_run
    before = done_mtimes(result.run_dir)
    counter = LoadCounter(monkeypatch)
    again = sweep.run_sweep(cfg, progress=False, print_fn=lambda s: None)
    assert again.ran == [] and counter.calls == []  # nothing to do: not even a model load
    assert done_mtimes(result.run_dir) == before
    changed = sweep.load_config(Path(cfg.source), {"limit": 3})
    with pytest.raises(CAAEvalError, match=r"different setting \(limit\); use a new output folder"):
        sweep.run_sweep(changed, progress=False, print_fn=lambda s: None)
    raw = sweep.load_config(Path(cfg.source), {"normalize": False})
    with pytest.raises(CAAEvalError, match=r"different setting \(vector_sha256\) \(normalize is false now\)"):
        sweep.run_sweep(raw, progress=False, print_fn=lambda s: None)
    assert counter.calls == []


def test_interrupted_sweep_resumes_without_recomputing_finished_cells(
    full_run, tmp_path, tiny_model_dir, caa_env, monkeypatch
):
    cfg = sweep.load_config(write_config(tmp_path / "sweep.yaml", **base_keys(tiny_model_dir, tmp_path / "run")))
    seen: list[str] = []

    def stop_after_three(cell):
        seen.append(cell.id)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, progress=False, print_fn=lambda s: None, after_cell=stop_after_three)
    run = tmp_path / "run"
    first = done_mtimes(run)
    assert sorted(first) == sorted(seen)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["runs"][-1]["status"] == "interrupted"
    # make it look like a SIGKILL instead: no clean exit recorded, and a stale lock of a dead process
    manifest["runs"][-1]["status"] = "running"
    (run / "manifest.json").write_text(json.dumps(manifest))
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / ".lock").write_text(f"{dead.pid}@{socket.gethostname()}\n")
    # a cell that crashed half-way: a folder without DONE, and a half-built one in .partial
    todo = [c.id for c in sweep.plan_cells(cfg) if c.id not in first]
    (run / "cells" / todo[0]).mkdir(parents=True)
    (run / "cells" / todo[0] / "results_2026-01-01T00-00-00.json").write_text("{trunc")
    (run / ".partial" / todo[1]).mkdir(parents=True, exist_ok=True)

    calls: list[str] = []
    original = sweep.runner.run_cell

    def counting_run_cell(lm, cfg_, cell, *args, **kwargs):
        calls.append(cell.id)
        return original(lm, cfg_, cell, *args, **kwargs)

    monkeypatch.setattr(sweep.runner, "run_cell", counting_run_cell)
    resumed = sweep.run_sweep(cfg, progress=False, print_fn=lambda s: None)
    assert sorted(calls) == sorted(todo) and sorted(resumed.skipped) == sorted(first)
    assert {k: v for k, v in done_mtimes(run).items() if k in first} == first  # finished cells untouched
    assert not list((run / "cells" / todo[0]).glob("results_2026-01-01*"))  # the torn cell was redone
    manifest = json.loads((run / "manifest.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["killed", "complete"]
    assert not (run / ".lock").exists()
    # same numbers as the uninterrupted run
    assert cell_means(run) == pytest.approx(cell_means(full_run[0].run_dir), abs=1e-9)


def test_conditions_share_or_load_models_once_each(tmp_path, tiny_model_dir, caa_env, monkeypatch):
    other = tmp_path / "other-model"
    other.symlink_to(tiny_model_dir, target_is_directory=True)
    counter = LoadCounter(monkeypatch)
    keys = base_keys(
        tiny_model_dir,
        tmp_path / "run",
        behaviours=["sycophancy"],
        layers=[1],
        multipliers=[-1, 1],
        conditions=[
            {"name": "base"},
            {"name": "sys", "system_instruction": "Answer briefly."},
            {"name": "other", "pretrained": str(other)},
        ],
    )
    result = sweep.run_sweep(
        sweep.load_config(write_config(tmp_path / "s.yaml", **keys)), progress=False, print_fn=lambda s: None
    )
    # base and sys use the same weights: one load for both; `other` is a second model
    assert sorted(counter.calls) == sorted([str(tiny_model_dir), str(other)])
    assert len(result.ran) == 3 * 3
    report = json.loads((result.run_dir / "report" / "report.json").read_text())
    assert {c["condition"] for c in report["cells"]} == {"base", "sys", "other"}
    sys_cell = json.loads((result.run_dir / "cells" / "baseline__sys__caa_ab_sycophancy" / "cell.json").read_text())
    assert sys_cell["system_instruction"] == "Answer briefly."
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert set(manifest["models"]) == {"base", "sys", "other"}


def test_normalize_and_open_ended_cells_are_judged(tmp_path, tiny_model_dir, caa_env):
    # per-behaviour task lists: only sycophancy gets the (slower) open-ended task
    behaviours = [{"name": "sycophancy", "tasks": ["caa_ab_{behaviour}", "caa_open_{behaviour}"]}, "refusal"]
    keys = base_keys(
        tiny_model_dir,
        tmp_path / "run",
        layers=[1],
        multipliers=[1],
        limit=1,
        behaviours=behaviours,
        vectors={"dir": str(tmp_path / "vecs"), "normalize": True},
        judge={"backend": "hf", "model": str(tiny_model_dir), "cache": False, "batch_size": 4},
        gen_kwargs={"max_gen_toks": 12},
    )
    result = sweep.run_sweep(
        sweep.load_config(write_config(tmp_path / "s.yaml", **keys)), progress=False, print_fn=lambda s: None
    )
    from caa_eval.core import vectors

    raw = [vectors.load(tmp_path / "vecs" / f"{b}.safetensors") for b in BEHAVIOURS]
    used = [vectors.load(result.run_dir / "vectors_normalized" / f"{b}.safetensors") for b in BEHAVIOURS]
    mean_norm = sum(float(v.vectors[1].norm()) for v in raw) / 2
    assert all(abs(float(v.vectors[1].norm()) - mean_norm) < 1e-4 and v.normalization for v in used)
    cell = result.run_dir / "cells" / "sycophancy__base__L1__residual__after_instruction__m+1"
    judged = list(cell.glob("judged_caa_open_sycophancy_*.jsonl"))
    assert len(judged) == 1 and all(json.loads(x)["score"] is not None for x in judged[0].read_text().splitlines())
    assert json.loads((cell / "cell.json").read_text())["judged"]["caa_open_sycophancy"]["n"] == 1
    assert (result.run_dir / "cells" / "baseline__base__caa_open_sycophancy" / "DONE").exists()
    assert not (result.run_dir / "cells" / "baseline__base__caa_open_refusal").exists()
    report = json.loads((result.run_dir / "report" / "report.json").read_text())
    assert {t["family"] for t in report["tables"]} == {"caa_ab", "caa_open"}


def test_cli_sigint_keeps_finished_cells_and_rerun_completes(tmp_path, tiny_model_dir):
    """The real CLI on examples/sweep_tiny.yaml (a custom behaviour): Ctrl-C once the vector is extracted (the cells'
    one-pass grid is then running: a Ctrl-C after the first DONE could land after the last cell), then rerun.
    Finished cells surviving a kill byte for byte is tests/reliability's SIGKILL fault test."""
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "caa_eval.cli",
        "sweep",
        str(EXAMPLES / "sweep_tiny.yaml"),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--layers",
        "0-3",
        "--multipliers=-4,-3,-2,-1,1,2,3,4",  # 32 settings: after the first DONE there is seconds of work left
        "--no-report",
    ]
    # the child gets the default Ctrl-C disposition: an earlier test in the same pytest process may have left SIGINT
    # ignored, and an ignored SIGINT is inherited (Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not list(out.glob("vectors/*.safetensors")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # 130, or ended by SIGINT (-2; a shell shows 130 for both): under load the interpreter was seen to end by
    # SIGINT after the CLI had handled the interrupt and returned 130 (CPython re-raises an interrupt it saw at exit)
    assert proc.returncode in (130, -signal.SIGINT), err[-2000:]
    assert "interrupted; finished work is kept" in err, err[-2000:]
    assert "interrupted; finished work is kept" in err
    first = done_mtimes(out)
    assert len(first) < 33
    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    final = done_mtimes(out)
    assert len(final) == 1 + 4 * 8 and {k: final[k] for k in first} == first
    assert f"{len(final) - len(first)} cell(s) run, {len(first)} already done" in rerun.stdout
    generated = (out / "tasks" / "caa_ab_agree.yaml").read_text()
    assert "test_file" in generated and "pairs_file" in generated


def test_dry_run_lists_cells_and_vectors_without_running(tmp_path, tiny_model_dir, caa_env, monkeypatch):
    counter = LoadCounter(monkeypatch)
    cfg = sweep.load_config(write_config(tmp_path / "s.yaml", **base_keys(tiny_model_dir, tmp_path / "run")))
    lines: list[str] = []
    sweep.run_sweep(cfg, dry_run=True, print_fn=lines.append)
    text = "\n".join(lines)
    assert "10 cells (0 done, 10 to run)" in text and "extract sycophancy (site residual) layers [1, 2]" in text
    assert "[todo] refusal__base__L2__residual__after_instruction__m+1" in text
    assert counter.calls == [] and not (tmp_path / "run").exists()


def test_a_live_lock_stops_a_second_sweep_on_the_same_folder(tmp_path, tiny_model_dir, caa_env, monkeypatch):
    counter = LoadCounter(monkeypatch)
    cfg = sweep.load_config(write_config(tmp_path / "s.yaml", **base_keys(tiny_model_dir, tmp_path / "run")))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(f"{os.getppid()}@{socket.gethostname()}\n")  # a live process
    with pytest.raises(CAAEvalError, match=r"another sweep \(pid \d+\) is writing this folder"):
        sweep.run_sweep(cfg, progress=False, print_fn=lambda s: None)
    assert counter.calls == [] and not (tmp_path / "run" / "cells").exists()
