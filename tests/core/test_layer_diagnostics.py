"""Per-layer pair consistency and AUROC recorded at extraction equal a numpy computation on the tiny model's
activations, read here with plain batch-1 forward passes (issue 19 item 5)."""

from __future__ import annotations

import json

import numpy as np
import torch

from caa_eval.cli import main
from caa_eval.core import vectors
from caa_eval.core.layers import decoder_layers
from tests.helpers.caa_reference import chat_encoder

PAIRS = [
    {
        "question": f"Item {i}: should we {'wait' if i % 3 else 'act now'}?{' Think.' * (i % 3)}\n\nChoices:\n (A) Yes\n (B) No",
        "answer_matching_behavior": "(A)" if i % 2 else "(B)",
        "answer_not_matching_behavior": "(B)" if i % 2 else "(A)",
    }
    for i in range(9)
]


def activations(model, tok) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Every block's output at the answer letter (index -2 of `… (X)`), matching and non-matching, batch 1."""
    encode, blocks = chat_encoder(tok), decoder_layers(model)
    store: dict[int, np.ndarray] = {}
    hooks = [
        b.register_forward_hook(
            lambda m, a, o, i=i: store.__setitem__(i, (o if torch.is_tensor(o) else o[0])[0, -2].double().numpy())
        )
        for i, b in enumerate(blocks)
    ]
    out: dict[int, tuple[list, list]] = {i: ([], []) for i in range(len(blocks))}
    try:
        for pair in PAIRS:
            for side, key in enumerate(("answer_matching_behavior", "answer_not_matching_behavior")):
                with torch.no_grad():
                    model(torch.tensor([encode(pair["question"], pair[key])]))
                for i in out:
                    out[i][side].append(store[i].copy())
    finally:
        for h in hooks:
            h.remove()
    return {i: (np.array(p), np.array(n)) for i, (p, n) in out.items()}


def reference(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    d = pos - neg
    mean = d.mean(0)
    consistency = np.mean(d @ mean / (np.linalg.norm(d, axis=1) * np.linalg.norm(mean)))
    u = mean / np.linalg.norm(mean)
    a, b = pos @ u, neg @ u
    auroc = np.mean((a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :]))  # every (matching, other) pair
    return float(consistency), float(auroc)


def test_extract_records_consistency_and_auroc_per_layer(tiny_model, tiny_model_dir, tmp_path, capsys):
    model, tok = tiny_model
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(PAIRS))
    out = tmp_path / "v.safetensors"
    assert main(["extract", "--model", str(tiny_model_dir), "--data", str(pairs), "--out", str(out)]) == 0
    stored = vectors.load(out).extra["layer_diagnostics"]
    ref = activations(model, tok)
    assert sorted(stored, key=int) == [str(i) for i in sorted(ref)]
    aurocs = []
    for layer, (pos, neg) in ref.items():
        consistency, auroc = reference(pos, neg)
        assert abs(stored[str(layer)]["consistency"] - consistency) < 1e-5, layer
        assert abs(stored[str(layer)]["auroc"] - auroc) < 1e-9, layer
        aurocs.append(auroc)
    assert len(set(aurocs)) > 1 or 0 < aurocs[0] < 1  # the check is not vacuous on this fixture
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    layer0 = stored["0"]
    assert f"pair consistency {layer0['consistency']:.3f}  AUROC {layer0['auroc']:.3f}" in text
