"""One labelling rule for every row (issue 27): a task measured under several vectors, judged or not, is paired
with the one unsteered run of that task; a cell whose baseline is gone is listed as "no baseline" and the report
still builds (exit 0, one warning line naming it), never an error after the work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from caa_eval import cli, sweep
from tests.helpers.fake_openai_server import serve
from tests.helpers.sweep_data import write_sycophancy_layout

REPO = Path(__file__).resolve().parents[2]
TINY_DATA = REPO / "examples" / "tiny_data"
OPEN, AB = "caa_open_sycophancy", "caa_ab_sycophancy"
VECTORS = ("agree", "sycophancy")
LIMIT = 3


@pytest.fixture(scope="module")
def labelled_run(tiny_model_dir, tmp_path_factory):
    """A custom behaviour and sycophancy; the sycophancy open-ended and A/B tasks listed for both vectors; an
    OpenAI-compatible fake judge; multipliers -4/+4 at one layer."""
    tmp = tmp_path_factory.mktemp("labels")
    mp = pytest.MonkeyPatch()
    mp.setenv("CAA_EVAL_DATA_DIR", str(write_sycophancy_layout(tmp / "caa")))
    mp.setenv("OPENAI_API_KEY", "test-key")
    mp.setenv("NO_PROXY", "127.0.0.1,localhost")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        mp.delenv(var, raising=False)
    try:
        with serve(lifetime=600) as srv:
            cfg = sweep.config_from_dict(
                {
                    "model": str(tiny_model_dir),
                    "behaviours": [
                        {
                            "name": "agree",
                            "pairs": str(TINY_DATA / "agree_pairs.jsonl"),
                            "ab_test": str(TINY_DATA / "agree_test.json"),
                        },
                        "sycophancy",
                    ],
                    "tasks": ["caa_ab_{behaviour}", OPEN, AB],
                    "layers": [1],
                    "multipliers": [-4, 4],
                    "limit": LIMIT,
                    "batch_size": 8,
                    "device": "cpu",
                    "gen_kwargs": {"max_gen_toks": 6},
                    "judge": {"backend": "openai", "model": "fake", "base_url": srv.base_url, "cache": False},
                    "output": str(tmp / "run"),
                }
            )
            result = sweep.run_sweep(cfg, progress=False, print_fn=lambda _: None)
        yield result.run_dir
    finally:
        mp.undo()


def _report(run: Path) -> dict:
    return json.loads((run / "report" / "report.json").read_text())


def _scores(folder: Path, pattern: str, key: str) -> dict[int, float]:
    (path,) = folder.glob(pattern)
    return {r["doc_id"]: float(r[key]) for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize("task,metric,pattern", [(OPEN, "judge_score", "judged_*"), (AB, "p_match", "samples_*")])
def test_shared_task_is_paired_with_its_one_baseline_under_every_vector(labelled_run, task, metric, pattern):
    cells = [c for c in _report(labelled_run)["cells"] if c["task"] == task and c["metric"] == metric]
    steered = {(c["behaviour"], c["multiplier"]): c for c in cells if not c["is_baseline"]}
    assert set(steered) == {(b, m) for b in VECTORS for m in (-4.0, 4.0)}
    base_dir = labelled_run / "cells" / f"baseline__base__{task}"
    (base_file,) = base_dir.glob(f"{pattern}{task}_*.jsonl")
    base = _scores(base_dir, f"{pattern}{task}_*.jsonl", "score" if metric == "judge_score" else metric)
    for (vector, m), cell in steered.items():
        assert cell["baseline_sources"] == [base_file.relative_to(labelled_run).as_posix()]
        assert "no baseline" not in cell["note"] and cell["p_wilcoxon"] is not None
        folder = labelled_run / "cells" / f"{vector}__base__L1__residual__after_instruction__m{m:+g}"
        mine = _scores(folder, f"{pattern}{task}_*.jsonl", "score" if metric == "judge_score" else metric)
        d = np.array([mine[i] - base[i] for i in sorted(mine)])
        assert cell["n"] == LIMIT == d.size and cell["diff_vs_0"] == pytest.approx(float(d.mean()), abs=1e-12)


def test_a_removed_baseline_is_listed_not_an_error(labelled_run, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(labelled_run, run)
    shutil.rmtree(run / "cells" / f"baseline__base__{OPEN}")
    old_style = run / "cells" / f"baseline__base__{AB}" / "cell.json"  # older sweeps named the task's behaviour
    old_style.write_text(json.dumps(json.loads(old_style.read_text()) | {"behaviour": "sycophancy"}))
    with caplog.at_level("WARNING"):
        assert cli.main(["report", str(run)]) == 0
    lines = [r.getMessage() for r in caplog.records if "no multiplier-0 baseline" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("4 steered cell(s)") and f"task={OPEN}" in lines[0]
    report = _report(run)
    lacking = [c for c in report["cells"] if c["task"] == OPEN]
    assert len(lacking) == 4 and all(c["note"] == "no baseline" and c["p_holm"] is None for c in lacking)
    assert "| no baseline" in (run / "report" / "report.md").read_text() or "no baseline" in str(report["warnings"])
    tested = [c for c in report["cells"] if c["task"] == AB and not c["is_baseline"]]
    assert len(tested) == 4 and all(c["p_wilcoxon"] is not None and c["baseline_sources"] for c in tested)
