"""Faults: a sweep SIGKILLed when some of its cells are finished and some not, a judge run SIGKILLed after
some requests, and disk-full (a write that raises ENOSPC at the N-th call); each rerun must end with the same
results as an uninterrupted run, and nothing written before the fault may be lost or damaged.

The judge and disk-full points are random but reproducible: $CAA_EVAL_FAULT_SEED (default 14) seeds them,
and the table row says which point was hit.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _harness import REPO, changes, lm_eval_env, record_fault, snapshot

SEED = int(os.environ.get("CAA_EVAL_FAULT_SEED", "14"))
KEY = "sk-caa-reliability-fault"


def _rng(name: str) -> random.Random:
    return random.Random(f"{SEED}:{name}")


TOL = 1e-6  # the sweep's grid pass batches the settings it still has to run: float noise ~1e-8 between runs


def _report_cells(run_dir: Path) -> list[dict]:
    """The report's numbers, without paths and times (those differ between two runs by design)."""
    report = json.loads((run_dir / "report" / "report.json").read_text())
    keep = (
        "behaviour",
        "task",
        "metric",
        "layer",
        "site",
        "multiplier",
        "n",
        "mean",
        "ci_low",
        "ci_high",
        "diff_vs_0",
        "p_wilcoxon",
        "p_permutation",
        "p_holm",
        "significant",
    )
    return sorted(
        ({k: c.get(k) for k in keep} for c in report["cells"]),
        key=lambda c: json.dumps([c["behaviour"], c["task"], c["metric"], c["layer"], c["site"], c["multiplier"]]),
    )


def _cell_results(run_dir: Path) -> dict[str, list]:
    """Every finished cell's per-item results (what a later report is built from)."""
    out = {}
    for done in sorted((run_dir / "cells").glob("*/DONE")):
        for f in sorted(done.parent.rglob("samples_*.jsonl")):
            rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            out[f"{done.parent.name}/{f.name.split('_20')[0]}"] = [
                (r["doc_id"], r.get("p_match"), [float(x[0]) for x in r.get("filtered_resps", [])]) for r in rows
            ]
    return out


def _cell_files(run_dir: Path) -> dict[str, str]:
    """Exact content of the finished (DONE) cells: a cell done before a fault must never be rewritten."""
    return snapshot(sorted(done.parent for done in run_dir.glob("cells/*/DONE")))


def same(a, b) -> bool:
    """Equal, numbers within TOL (relative or absolute)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(a - b) <= TOL * max(1.0, abs(a), abs(b))
    return a == b


def _leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".caa-eval-write-check")]


# ---------------------------------------------------------------------------------------------- sweep


@pytest.fixture(scope="module")
def sweep_setup(inputs, tmp_path_factory):
    """The fault sweep's config and an uninterrupted reference run of it (in this process)."""
    import yaml

    from caa_eval import sweep

    root = tmp_path_factory.mktemp("fault_sweep")
    keys = {
        "model": inputs["tiny"],
        "behaviours": ["sycophancy"],
        "layers": [1],
        "multipliers": [-60, 0, 60],
        "tasks": ["caa_ab_{behaviour}"],
        "batch_size": 4,
        "device": "cpu",
        "caa_data_dir": inputs["sweep"] + "/caa",
    }
    config = root / "fault.yaml"
    config.write_text(yaml.safe_dump(keys, sort_keys=False))
    replaces: list[str] = []
    real_replace = os.replace

    def counting(src, dst, *a, **k):
        replaces.append(str(dst))
        return real_replace(src, dst, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(os, "replace", counting)
    try:
        reference = sweep.run_sweep(
            sweep.load_config(config, {"output": str(root / "reference")}), progress=False, print_fn=lambda s: None
        )
    finally:
        mp.undo()
    return config, root, reference.run_dir, len(replaces)


def _done_cells(run: Path) -> int:
    return len(list((run / "cells").glob("*/DONE"))) if (run / "cells").is_dir() else 0


@pytest.mark.parametrize("after", [1, 2])
def test_sweep_sigkill_then_rerun_gives_the_same_report(sweep_setup, after):
    """SIGKILL as soon as the N-th of 3 cells' DONE marker appears (polled every 2 ms; cells finish >= 0.2 s
    apart), so some cells are finished and some not; the finished ones must be kept byte for byte by the rerun,
    which ends with the report of an uninterrupted run."""
    from caa_eval import sweep

    config, root, reference, _ = sweep_setup
    run = root / f"killed{after}"
    row = record_fault(
        f"sweep-sigkill-after-{after}",
        "SIGKILL",
        "caa-eval sweep fault.yaml",
        f"SIGKILL when cell {after} of 3 is DONE, then the same command again",
        "finished cells kept byte-identical; rerun runs only the rest and ends with the uninterrupted run's report",
        "",
    )
    cmd = [sys.executable, "-m", "caa_eval.cli", "sweep", str(config), "--out", str(run)]
    proc = subprocess.Popen(cmd, env=lm_eval_env(), cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while proc.poll() is None and _done_cells(run) < after and time.monotonic() < deadline:
        time.sleep(0.002)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert alive, f"the sweep ended before the kill point: {err.decode()[-2000:]}"
    kept = _cell_results(run)
    kept_files = _cell_files(run)
    assert after <= len(kept) < 3, f"killed with {len(kept)} of 3 cells done: not a partly finished sweep"
    resumed = sweep.run_sweep(sweep.load_config(config, {"output": str(run)}), progress=False, print_fn=lambda s: None)
    after_files = _cell_files(run)
    assert {k: after_files.get(k) for k in kept_files} == kept_files, "a cell finished before the kill changed"
    assert len(resumed.skipped) == len(kept), "the rerun recomputed a finished cell"
    assert same(_cell_results(run), _cell_results(reference))
    assert same(_report_cells(run), _report_cells(reference))
    assert not _leftovers(run)
    statuses = [r["status"] for r in json.loads((run / "manifest.json").read_text())["runs"]]
    row["message"] = (
        f"killed with {len(kept)} of {len(resumed.cells)} cells done; rerun ran "
        f"{len(resumed.cells) - len(resumed.skipped)}, skipped {len(resumed.skipped)}; the {len(kept_files)} files "
        f"of the finished cells byte-identical; manifest runs {statuses}; report equal to the uninterrupted run"
    )
    row["result"] = "pass"


@pytest.mark.parametrize("attempt", [0, 1])
def test_sweep_disk_full_keeps_results_and_rerun_completes(sweep_setup, monkeypatch, attempt):
    """os.replace raises ENOSPC at a seeded N-th call of the sweep: the error surfaces, finished cells stay intact,
    no temporary file is left, and the rerun ends with the uninterrupted run's report."""
    from caa_eval import sweep

    config, root, reference, n_replaces = sweep_setup
    nth = _rng(f"enospc{attempt}").randint(1, n_replaces)
    run = root / f"enospc{attempt}"
    row = record_fault(
        f"sweep-enospc-{attempt}",
        "disk full",
        "caa_eval.run_sweep(cfg)",
        f"os.replace raises ENOSPC at call {nth} of {n_replaces} (seed {SEED}), then the sweep again",
        "OSError(ENOSPC) surfaces; finished cells and files intact; rerun ends with the same report",
        "",
    )
    real_replace = os.replace
    calls = {"n": 0}

    def full(src, dst, *a, **k):
        calls["n"] += 1
        if calls["n"] == nth:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *a, **k)

    cfg = sweep.load_config(config, {"output": str(run)})
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError) as info:
        sweep.run_sweep(cfg, progress=False, print_fn=lambda s: None)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    kept = _cell_results(run)
    kept_files = _cell_files(run)
    reference_cells = _cell_results(reference)
    assert all(same(v, reference_cells[k]) for k, v in kept.items())
    assert not _leftovers(run)
    sweep.run_sweep(sweep.load_config(config, {"output": str(run)}), progress=False, print_fn=lambda s: None)
    after_files = _cell_files(run)
    assert {k: after_files.get(k) for k in kept_files} == kept_files, "a cell finished before the fault changed"
    assert same(_cell_results(run), reference_cells)
    assert same(_report_cells(run), _report_cells(reference))
    row["message"] = (
        f"failed at write {nth} ({len(kept)} cells done, all equal to the reference); rerun completed; "
        "report equal to the uninterrupted run (numbers to 1e-6); no temp files left"
    )
    row["result"] = "pass"


# ---------------------------------------------------------------------------------------------- judge


def _samples(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    path = folder / "samples_caa_open_sycophancy_2026-01-01T00-00-00.000001.jsonl"
    with path.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "doc_id": i,
                        "doc": {"question": f"Question {i}?"},
                        "arguments": {"gen_args_0": {"arg_0": "c", "arg_1": {}}},
                        "resps": [[f"answer {i} SCORE={i % 11}"]],
                        "filtered_resps": [f"answer {i} SCORE={i % 11}"],
                        "filter": "none",
                    }
                )
                + "\n"
            )
    return path


def _judged(samples: Path) -> list[tuple]:
    from caa_eval import judge

    rows = [json.loads(line) for line in judge.output_path(samples).read_text().splitlines()]
    return [(r["doc_id"], r["score"], r["status"]) for r in rows]


@pytest.mark.parametrize("attempt", [0, 1])
def test_judge_sigkill_then_rerun_pays_only_for_the_rest(tmp_path, attempt):
    """SIGKILL after a seeded number of judge requests: nothing half-written; the rerun asks only for the verdicts
    not yet cached and writes the same judged file as an uninterrupted run."""
    from caa_eval.judge import judge_samples
    from tests.helpers.fake_openai_server import serve

    n = 24
    rng = _rng(f"judge{attempt}")
    kill_after = rng.randint(2, n - 4)
    row = record_fault(
        f"judge-sigkill-{attempt}",
        "SIGKILL",
        "caa-eval judge RUN",
        f"SIGKILL after {kill_after} of {n} judge requests (seed {SEED}), then the run again",
        "nothing half-written; rerun asks only for verdicts not yet cached; same judged file",
        "",
    )
    ref = _samples(tmp_path / "ref", n)
    run = _samples(tmp_path / "run", n)
    cache = tmp_path / "cache.sqlite"
    with serve(latency=0.1, api_key=KEY) as srv:
        judge_samples(tmp_path / "ref", base_url=srv.base_url, api_key=KEY, cache_path=None, concurrency=4)
        srv.reset()
        env = dict(
            lm_eval_env(),
            OPENAI_API_KEY=KEY,
            OPENAI_BASE_URL=srv.base_url,
            NO_PROXY="127.0.0.1,localhost",
            CAA_EVAL_CACHE=str(tmp_path / "home"),
        )
        env = {k: v for k, v in env.items() if not k.lower().endswith("_proxy") or k == "NO_PROXY"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "caa_eval.cli",
                "judge",
                str(tmp_path / "run"),
                "--cache",
                str(cache),
                "--concurrency",
                "2",
            ],
            env=env,
            cwd=str(REPO),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        while srv.stats()["requests"] < kill_after and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert alive, f"the judge run ended before the kill point: {err.decode()[-2000:]}"
        from caa_eval import judge

        assert not judge.output_path(run).exists(), "a killed run left a judged file"
        with sqlite3.connect(cache) as db:
            done = db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
        paid_before = srv.stats()["requests"]
        srv.reset()
        summary = judge_samples(tmp_path / "run", base_url=srv.base_url, api_key=KEY, cache_path=cache, concurrency=4)
        assert srv.stats()["requests"] == n - done, "the rerun paid again for cached verdicts"
        assert summary.usage.cached == done
    assert _judged(run) == _judged(ref)
    row["message"] = (
        f"killed after {paid_before} requests with {done} verdicts cached ({paid_before - done} answered "
        f"or in flight but not yet cached); rerun made {n - done} requests; judged file identical to the "
        "reference"
    )
    row["result"] = "pass"


def test_judge_disk_full_keeps_paid_verdicts(tmp_path, monkeypatch):
    """ENOSPC while the judged file is written: the earlier judged file is intact, the paid verdicts are cached,
    and the rerun makes no paid call."""
    from caa_eval import judge
    from caa_eval.judge import judge_samples
    from tests.helpers.fake_openai_server import serve

    n = 6
    samples = _samples(tmp_path / "run", n)
    target = judge.output_path(samples)
    target.write_text("earlier results\n")
    cache = tmp_path / "cache.sqlite"
    row = record_fault(
        "judge-enospc",
        "disk full",
        "caa_eval.judge.judge_samples(RUN)",
        "os.replace raises ENOSPC when the judged file is written, then the run again",
        "earlier judged file intact; verdicts cached; rerun makes no paid call",
        "",
    )
    real_replace = os.replace

    def full(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    with serve(latency=0.0, api_key=KEY) as srv:
        monkeypatch.setattr(os, "replace", full)
        with pytest.raises(OSError):
            judge_samples(tmp_path / "run", base_url=srv.base_url, api_key=KEY, cache_path=cache)
        monkeypatch.setattr(os, "replace", real_replace)
        assert target.read_text() == "earlier results\n" and not _leftovers(tmp_path)
        srv.reset()
        summary = judge_samples(tmp_path / "run", base_url=srv.base_url, api_key=KEY, cache_path=cache)
        assert srv.stats()["requests"] == 0 and summary.usage.cached == n
    assert [s for _, s, _ in _judged(samples)] == [float(i % 11) for i in range(n)]
    row["message"] = f"earlier file intact, {n} verdicts cached; rerun: 0 requests, {n} from cache"
    row["result"] = "pass"


# ---------------------------------------------------------------------------------------------- CLI writes


@pytest.mark.parametrize("command", ["stats", "extract"])
def test_cli_disk_full_is_one_line_and_keeps_the_old_file(command, env, monkeypatch):
    """ENOSPC while replacing an existing output: exit 1, one line, the old file untouched; a rerun writes it."""
    from caa_eval import cli

    p = env.paths
    work = Path(p["out"]).parent / f"enospc_{command}"
    work.mkdir()
    if command == "stats":
        target, argv = work / "stats.json", ["stats", p["scores"] + "/good.csv", "--json", str(work / "stats.json")]
    else:
        target = work / "v.safetensors"
        argv = [
            "extract",
            "--model",
            p["tiny"],
            "--data",
            p["pairs"] + "/good.json",
            "--out",
            str(target),
            "--layers",
            "1",
        ]
    target.write_bytes(b"earlier results\n")
    row = record_fault(
        f"{command}-enospc",
        "disk full",
        f"caa-eval {command} … (output exists)",
        "os.replace raises ENOSPC when the output is written, then the command again",
        "exit 1, one error line, no traceback, old output intact; rerun writes it",
        "",
    )
    before = snapshot([work])
    real_replace = os.replace

    def full(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", full)
    env.capsys.readouterr()
    code = cli.main(argv)
    err = env.capsys.readouterr().err
    monkeypatch.setattr(os, "replace", real_replace)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 1 and len(lines) == 1 and "No space left on device" in lines[0], err
    assert "Traceback" not in err
    assert not changes(before, snapshot([work])), "the old output or a temp file changed"
    assert cli.main(argv) == 0 and target.read_bytes() != b"earlier results\n"
    row["message"] = f"exit {code}: {lines[0].replace(p['root'] + '/', '')}; rerun exit 0"
    row["result"] = "pass"
