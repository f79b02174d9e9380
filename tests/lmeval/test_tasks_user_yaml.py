"""docs/adding-a-behaviour.md, done for real: a user's files + a 5-line YAML in a temp dir, run by the
lm_eval CLI. Also `caa-eval tasks`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from caa_eval import cli, data

REPO = Path(__file__).resolve().parents[2]
LM_EVAL = Path(sys.executable).with_name("lm_eval")


def _item(k: int, matching: str) -> dict:
    other = "B" if matching == "A" else "A"
    return {
        "question": f"Question {k}: is the sky green on day {k}?\n\nChoices:\n (A) Yes\n (B) No",
        "answer_matching_behavior": f"({matching})",
        "answer_not_matching_behavior": f"({other})",
    }


def _user_files(folder: Path) -> None:
    """A tiny behaviour: contrast pairs (JSONL) and held-out test items (JSON), plus the task YAML."""
    folder.mkdir(parents=True)
    with (folder / "agree_pairs.jsonl").open("w", encoding="utf-8") as f:
        for k in range(6):
            f.write(json.dumps(_item(k, "AB"[k % 2])) + "\n")
    (folder / "agree_test.json").write_text(
        json.dumps([_item(k, "BA"[k % 2]) for k in range(100, 104)]), encoding="utf-8"
    )
    template = data.template_path("ab")
    (folder / "agree.yaml").write_text(
        f"include: {template}\n"
        "task: agree\n"
        "dataset_kwargs:\n"
        "  test_file: agree_test.json\n"
        "  pairs_file: agree_pairs.jsonl\n",
        encoding="utf-8",
    )
    assert len((folder / "agree.yaml").read_text().splitlines()) <= 6


def test_add_a_behaviour_with_a_short_yaml(tmp_path, tiny_model_dir):
    user = tmp_path / "my_tasks"
    _user_files(user)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        str(LM_EVAL),
        "--model",
        "hf",
        "--model_args",
        f"pretrained={tiny_model_dir}",
        "--device",
        "cpu",
        "--include_path",
        str(user),
        "--tasks",
        "agree",
        "--apply_chat_template",
        "--batch_size",
        "4",
        "--output_path",
        str(out),
        "--log_samples",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WITHOUT a chat template" not in proc.stderr
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    row = results["results"]["agree"]
    assert 0.0 <= row["p_match,none"] <= 1.0 and row["ab_mass,none"] > 0 and "match,none" in row
    samples = [json.loads(line) for line in next(out.rglob("samples_agree_*.jsonl")).read_text().splitlines()]
    assert [s["doc"]["question"].split(":")[0] for s in samples] == [f"Question {k}" for k in range(100, 104)]
    assert all(0.0 <= s["p_match"] <= 1.0 for s in samples)
    assert all(s["arguments"]["gen_args_0"]["arg_0"].endswith("<|im_start|>assistant\n(") for s in samples)


def test_user_yaml_overlap_and_missing_file_errors(tmp_path):
    from caa_eval.errors import CAAEvalError
    from caa_eval.lmeval.tasks import load_ab

    user = tmp_path / "u"
    _user_files(user)
    pairs = [json.loads(x) for x in (user / "agree_pairs.jsonl").read_text().splitlines()]
    (user / "leaky_test.json").write_text(json.dumps(pairs[:2]), encoding="utf-8")
    source = str(user / "agree.yaml")
    assert len(load_ab(test_file="agree_test.json", pairs_file="agree_pairs.jsonl", config_source=source)["test"]) == 4
    with pytest.raises(CAAEvalError, match="also appears in the contrast pairs"):
        load_ab(test_file="leaky_test.json", pairs_file="agree_pairs.jsonl", config_source=source)
    with pytest.raises(CAAEvalError, match=r"data file .*nope.json not found \(named in the task YAML .*agree.yaml\)"):
        load_ab(test_file="nope.json", config_source=source)


def test_tasks_cli_lists_tasks_counts_and_sources(monkeypatch, capsys, data_env, tmp_path):
    caa_data_dir, _ = data_env
    assert cli.main(["tasks"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip() and not line.startswith("[")}
    assert (
        lines["caa_ab_survival_instinct"].split()[1] == "46"
        and "[4 non-A/B left out]" in lines["caa_ab_survival_instinct"]
    )
    assert lines["caa_open_sycophancy"].split()[1] == "53"
    assert lines["caa_mmlu_2opt"].split()[1] == "570" and lines["caa_mmlu_2opt_full"].split()[1] == "14042"
    assert str(caa_data_dir / "test/refusal/test_dataset_ab.json") in lines["caa_ab_refusal"]
    assert "caa_mmlu_2opt_anatomy" not in lines
    monkeypatch.delenv(data.CAA_DATA_ENV)
    monkeypatch.setenv("CAA_EVAL_CACHE", str(tmp_path / "empty"))
    assert cli.main(["tasks", "--all"]) == 0
    out = capsys.readouterr().out
    assert "caa_mmlu_2opt_anatomy" in out and "missing (see [1])" in out and "caa-eval data download" in out
    assert cli.main(["tasks", "--template-path"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.is_absolute() and path.is_file() and path == data.template_path("ab")
