"""Fluency without a judge: distinct-n and 4-gram repetition on hand-made strings; steered-hf's perplexity of
its own steered generations equals an independent teacher-forced pass of the unsteered model; the metrics
are in the samples and aggregated (mean over samples with a value) in the results."""

from __future__ import annotations

import json
import math

import pytest
import torch

from caa_eval.core.vectors import SteeringVector, model_fingerprint
from caa_eval.lmeval.fluency import distinct_n, nanmean, repetition_rate, text_metrics

TASK = "caa_demo_optimism_open"  # shipped data: no CAA download needed


@pytest.mark.parametrize(
    "text, d1, d2, rep4",
    [
        ("the cat the cat the cat", 2 / 6, 2 / 5, 1 / 3),
        ("The CAT sat on the cat", 4 / 6, 4 / 5, 0.0),  # case-insensitive words
        ("a b c d a b c d a b", 4 / 10, 4 / 9, 3 / 7),
        ("one two three", 1.0, 1.0, math.nan),
        ("", math.nan, math.nan, math.nan),
    ],
)
def test_distinct_and_repetition_on_hand_made_strings(text, d1, d2, rep4):
    got = text_metrics(text)
    for name, want in (("distinct_1", d1), ("distinct_2", d2), ("repetition_4gram", rep4)):
        assert (math.isnan(got[name]) and math.isnan(want)) or got[name] == pytest.approx(want, abs=1e-12), name
    assert distinct_n("x y x y x", 3) == pytest.approx(2 / 3)
    assert repetition_rate("x y z w x y z w", 4) == pytest.approx(1 / 5)
    assert nanmean([1.0, math.nan, 3.0]) == 2.0 and math.isnan(nanmean([math.nan]))


def _teacher_forced_ppl(model, tok, context: str, generation: str) -> float:
    """The context's tokens, then the generation's own tokens; a plain forward pass of the unsteered model."""
    ctx = tok(context, add_special_tokens=False).input_ids
    cont = tok(generation, add_special_tokens=False).input_ids
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = model(ids).logits[0].double().log_softmax(-1)
    total = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    return math.exp(-total / len(cont))


def test_perplexity_is_the_unsteered_models_teacher_forced_one(tiny_model, tiny_model_dir, tmp_path):
    from caa_eval.lmeval.model import SteeredHFLM
    from caa_eval.lmeval.run import evaluate_to_folder

    model, tok = tiny_model
    torch.manual_seed(4)
    sv = SteeringVector(
        vectors={1: torch.randn(model.config.hidden_size)},
        behaviour="optimism",
        model_fingerprint=model_fingerprint(model),
    )
    vector = sv.save(tmp_path / "v.safetensors")
    lm = SteeredHFLM(
        pretrained=str(tiny_model_dir), vector=str(vector), layers=1, multiplier=4, batch_size=4, device="cpu"
    )
    results, _ = evaluate_to_folder(lm, [TASK], tmp_path / "run", limit=4, gen_kwargs={"max_gen_toks": 16})
    samples = [json.loads(line) for line in next((tmp_path / "run").glob("samples_*.jsonl")).open()]
    assert len(samples) == 4
    ppls = []
    for s in samples:
        context, generation = s["arguments"]["gen_args_0"]["arg_0"], s["resps"][0][0]
        assert generation, "the tiny model must generate something for the check to mean anything"
        ref = _teacher_forced_ppl(model, tok, context, generation)
        assert s["perplexity"] == pytest.approx(ref, rel=1e-5)
        words = generation.lower().split()
        assert s["distinct_1"] == pytest.approx(len(set(words)) / len(words))
        ppls.append(s["perplexity"])
    row = results["results"][TASK]
    assert row["perplexity,none"] == pytest.approx(sum(ppls) / len(ppls), rel=1e-9)
    assert {"distinct_1,none", "distinct_2,none", "repetition_4gram,none"} <= set(row)
