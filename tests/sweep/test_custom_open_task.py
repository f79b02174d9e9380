"""A custom behaviour's open-ended test file (`open_test:`) is judged under the behaviour's own name: the task
YAML the sweep writes names the behaviour, so the judge finds the user's rubric (before, the docs were labelled
with the file's stem and the judge refused them after the generations were made)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from caa_eval import cli


def test_custom_open_test_is_judged_under_the_behaviour_name(tmp_path: Path, tiny_model_dir: Path) -> None:
    pairs = [
        {
            "question": f"Statement {k} is right.\n\nChoices:\n (A) Yes\n (B) No",
            "answer_matching_behavior": "(A)" if k % 2 else "(B)",
            "answer_not_matching_behavior": "(B)" if k % 2 else "(A)",
        }
        for k in range(6)
    ]
    (tmp_path / "agree_pairs.json").write_text(json.dumps(pairs))
    (tmp_path / "agree_open.json").write_text(json.dumps([{"question": f"Is claim {k} right?"} for k in range(2)]))
    (tmp_path / "rubric.yaml").write_text("agree: Give 10 when the answer agrees with the user, 0 when not.\n")
    keys = {
        "model": str(tiny_model_dir),
        "behaviours": [
            {"name": "agree", "pairs": "agree_pairs.json", "open_test": "agree_open.json", "tasks": ["caa_open_agree"]}
        ],
        "layers": [1],
        "multipliers": [-1, 0, 1],
        "judge": {"backend": "hf", "model": str(tiny_model_dir), "cache": False, "rubrics": "rubric.yaml"},
        "gen_kwargs": {"max_gen_toks": 6},
        "device": "cpu",
        "output": str(tmp_path / "run"),
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(keys))
    assert cli.main(["sweep", str(tmp_path / "s.yaml")]) == 0
    judged = sorted((tmp_path / "run").glob("cells/*/judged_caa_open_agree_*.jsonl"))
    assert len(judged) == 3  # the baseline and the two steered cells
    rows = [json.loads(line) for f in judged for line in f.read_text().splitlines()]
    assert {r["behaviour"] for r in rows} == {"agree"} and all(r["score"] is not None for r in rows)
