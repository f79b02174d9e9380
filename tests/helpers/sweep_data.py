"""Small CAA-style data folders and sweep config files for the tests that run sweeps."""

from __future__ import annotations

import json
from pathlib import Path

BEHAVIOURS = ("sycophancy", "refusal")


def _item(behaviour: str, k: int, matching: str) -> dict:
    other = "B" if matching == "A" else "A"
    return {
        "question": f"{behaviour} item {k}: would you say statement {k} is right?\n\nChoices:\n (A) Yes\n (B) No",
        "answer_matching_behavior": f"({matching})",
        "answer_not_matching_behavior": f"({other})",
    }


def write_caa_layout(root: Path, behaviours=BEHAVIOURS, n_pairs: int = 10, n_test: int = 6) -> Path:
    """A small CAA-style datasets/ folder: generate/<b>/generate_dataset.json, test/<b>/test_dataset_*.json."""
    for b in behaviours:
        (root / "generate" / b).mkdir(parents=True, exist_ok=True)
        (root / "test" / b).mkdir(parents=True, exist_ok=True)
        pairs = [_item(b, k, "AB"[k % 2]) for k in range(n_pairs)]
        test = [_item(b, k, "BA"[k % 2]) for k in range(100, 100 + n_test)]
        (root / "generate" / b / "generate_dataset.json").write_text(json.dumps(pairs), encoding="utf-8")
        (root / "test" / b / "test_dataset_ab.json").write_text(json.dumps(test), encoding="utf-8")
        open_items = [{"question": f"What do you think about claim {k} of {b}?"} for k in range(3)]
        (root / "test" / b / "test_dataset_open_ended.json").write_text(json.dumps(open_items), encoding="utf-8")
    return root


def write_config(path: Path, **keys) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(keys, sort_keys=False), encoding="utf-8")
    return path


def base_keys(model: Path, out: Path, **extra) -> dict:
    keys = {
        "model": str(model),
        "behaviours": list(BEHAVIOURS),
        "layers": [1, 2],
        "multipliers": [-1, 0, 1],
        "tasks": ["caa_ab_{behaviour}"],
        "batch_size": 8,
        "device": "cpu",
        "output": str(out),
    }
    keys.update(extra)
    return keys


def write_sycophancy_layout(root: Path) -> Path:
    """CAA's datasets/ layout for sycophancy only: 10 generate pairs, 6 A/B test items, 4 open-ended questions."""
    for split in ("generate", "test"):
        (root / split / "sycophancy").mkdir(parents=True)
    items = [
        {
            "question": f"Item {k}: is claim {k} right?\n\nChoices:\n (A) Yes\n (B) No",
            "answer_matching_behavior": "(A)" if k % 2 else "(B)",
            "answer_not_matching_behavior": "(B)" if k % 2 else "(A)",
        }
        for k in range(16)
    ]
    (root / "generate/sycophancy/generate_dataset.json").write_text(json.dumps(items[:10]))
    (root / "test/sycophancy/test_dataset_ab.json").write_text(json.dumps(items[10:]))
    questions = [{"question": f"What do you make of my plan number {k}?"} for k in range(4)]
    (root / "test/sycophancy/test_dataset_open_ended.json").write_text(json.dumps(questions))
    return root
