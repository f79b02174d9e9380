"""caa_mmlu_2opt: per-item p_correct from a direct forward pass, group = mean per subject then over subjects."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from caa_eval import data
from tests.helpers.caa_tasks import chat_prompt, context_of, evaluate, letter_probs


def test_group_is_mean_per_subject_then_over_subjects(tiny_model, data_env):
    caa_data_dir, _ = data_env
    model, tok = tiny_model
    subjects = data.mmlu_subjects()
    # uneven item counts per subject, so a size-weighted mean would differ from the macro mean
    picks = {f"caa_mmlu_2opt_{s}": list(range(1 + k % 3)) for k, s in enumerate(subjects)}
    res = evaluate(model, tok, ["caa_mmlu_2opt"], samples=picks, batch_size=8)
    caa = json.loads((caa_data_dir / "test/mmlu/mmlu.json").read_text(encoding="utf-8"))
    by_subject = defaultdict(list)
    checked = 0
    for k, s in enumerate(subjects):
        samples = res["samples"][f"caa_mmlu_2opt_{s}"]
        assert len(samples) == 1 + k % 3
        for sample in samples:
            by_subject[s].append(sample["p_correct"])
            assert sample["doc"]["category"] == s
        # check the first item of each subject against CAA's own file and a direct forward pass
        sample = samples[0]
        item = caa[10 * k + sample["doc_id"]]
        assert sample["doc"]["prompt"] == item["prompt"] and item["category"] == s
        text = chat_prompt(tok, item["prompt"])
        assert context_of(sample) == text
        if len(tok(text).input_ids) < model.config.max_position_embeddings:  # lm-eval truncates longer ones
            p_a, p_b = letter_probs(model, tok, text)
            expected = (p_a if item["correct"] == "(A)" else p_b) / (p_a + p_b)
            assert sample["p_correct"] == pytest.approx(expected, abs=1e-5)
            assert sample["ab_mass"] == pytest.approx(p_a + p_b, abs=1e-5)
            checked += 1
    assert checked >= 40
    macro = sum(sum(v) / len(v) for v in by_subject.values()) / len(by_subject)
    flat = sum(sum(v) for v in by_subject.values()) / sum(len(v) for v in by_subject.values())
    group = res["results"]["caa_mmlu_2opt"]
    assert group["p_correct,none"] == pytest.approx(macro, abs=1e-12)
    assert abs(macro - flat) > 1e-6  # the check above can tell the two apart
    for s in subjects[:3]:
        sub = res["results"][f"caa_mmlu_2opt_{s}"]["p_correct,none"]
        assert sub == pytest.approx(sum(by_subject[s]) / len(by_subject[s]), abs=1e-12)


def test_full_variant_uses_the_seeded_rows(tiny_model, data_env):
    _, mmlu_dir = data_env
    model, tok = tiny_model
    task = "caa_mmlu_2opt_full_anatomy"
    res = evaluate(model, tok, [task], limit=4, metadata={"mmlu_seed": 3})
    rows = data.mmlu_full_rows("anatomy", seed=3, mmlu_dir=mmlu_dir)
    samples = res["samples"][task]
    assert [s["doc"]["prompt"] for s in samples] == [r["prompt"] for r in rows[:4]]
    for s in samples:
        p_a, p_b = letter_probs(model, tok, chat_prompt(tok, s["doc"]["prompt"]))
        expected = (p_a if s["doc"]["correct"] == "A" else p_b) / (p_a + p_b)
        assert s["p_correct"] == pytest.approx(expected, abs=1e-5)
