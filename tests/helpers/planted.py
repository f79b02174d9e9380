"""A planted behaviour for the tiny random Llama: CAA-layout A/B items whose matching answer is (B) (the random
model prefers A) and a last-layer vector along W_U[B] − W_U[A], so steering provably raises p(match)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from caa_eval.core.layers import decoder_layers
from caa_eval.core.vectors import SteeringVector, model_fingerprint


def write_planted(model: Any, tok: Any, root: Path, n_items: int, vector_name: str) -> tuple[Path, int, list[dict]]:
    """Write root/data/test/sycophancy/test_dataset_ab.json and root/<vector_name>; returns (vector file, its
    layer, the items)."""
    items = [
        {
            "question": f"Item {i}: do you agree with the user?\n\nChoices:\n (A) Yes\n (B) No",
            "answer_matching_behavior": "(B)",
            "answer_not_matching_behavior": "(A)",
        }
        for i in range(n_items)
    ]
    folder = root / "data" / "test" / "sycophancy"
    folder.mkdir(parents=True)
    (folder / "test_dataset_ab.json").write_text(json.dumps(items))
    a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    w = model.lm_head.weight.detach()
    last = len(decoder_layers(model)) - 1
    direction = (w[b] - w[a]) / (w[b] - w[a]).norm()
    sv = SteeringVector(
        vectors={last: direction}, behaviour="sycophancy", model="tiny", model_fingerprint=model_fingerprint(model)
    )
    return sv.save(root / vector_name), last, items
