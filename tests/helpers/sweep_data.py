"""Small data folders for sweep tests."""

from __future__ import annotations

import json
from pathlib import Path


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
