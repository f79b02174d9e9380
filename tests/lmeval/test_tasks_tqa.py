"""caa_tqa_2opt: CAA's 817 TruthfulQA items as two-option docs with seeded, per-category balanced letters;
per-item p_correct from a direct forward pass; group = mean per category, then over categories."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from caa_eval import data
from caa_eval.errors import CAAEvalError
from caa_eval.paths import tasks_dir
from tests.helpers.caa_tasks import chat_prompt, context_of, evaluate, letter_probs


def _raw(caa_data_dir):
    return json.loads((caa_data_dir / "test/truthfulqa/truthful_qa.json").read_text(encoding="utf-8"))


def test_group_has_817_items_in_32_category_tasks(caa_env):
    from lm_eval.tasks import TaskManager, get_task_dict

    tm = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    tasks = get_task_dict(["caa_tqa_2opt"], tm)
    (group,) = tasks.values()
    sizes = {name: len(list(task.eval_docs)) for name, task in group.items()}
    assert len(sizes) == 32
    assert sum(sizes.values()) == 817
    assert sizes["caa_tqa_2opt_misconceptions"] == 104 and sizes["caa_tqa_2opt_statistics"] == 5


@pytest.mark.parametrize("seed", [0, 7])
def test_letters_are_balanced_by_the_seed(caa_env, seed):
    raw = _raw(caa_env)
    rows = data.tqa_rows(seed=seed)
    assert len(rows) == 817
    by_category: dict[str, Counter] = defaultdict(Counter)
    for row, item in zip(rows, raw):
        by_category[row["category"]][row["correct"]] += 1
        # the correct text sits at the drawn letter, the incorrect one at the other, question unchanged
        lines = row["prompt"].split("\n")
        assert lines[-2 if row["correct"] == "A" else -1] == f"({row['correct']}) {item['correct_full_text']}"
        assert lines[-1 if row["correct"] == "A" else -2] == f"({row['incorrect']}) {item['incorrect_full_text']}"
        assert row["prompt"].split("\n\nChoices:")[0] == item["prompt"].split("\n\nChoices:")[0]
    assert len(by_category) == 32
    assert all(abs(c["A"] - c["B"]) <= 1 for c in by_category.values())
    total = Counter(r["correct"] for r in rows)
    assert abs(total["A"] - total["B"]) <= sum(1 for c in by_category.values() if sum(c.values()) % 2)
    # the draw is fixed by the seed, differs between seeds, and a category's rows do not depend on the others
    assert [r["correct"] for r in data.tqa_rows(seed=seed)] == [r["correct"] for r in rows]
    other = data.tqa_rows(seed=seed + 1)
    assert [r["correct"] for r in other] != [r["correct"] for r in rows]
    law = [r for r in rows if r["category"] == "Law"]
    assert data.tqa_rows("Law", seed=seed) == law


def test_caa_seed_keeps_caas_letters_and_bad_seed_is_refused(caa_env):
    raw = _raw(caa_env)
    rows = data.tqa_rows(seed="caa")
    assert [r["prompt"] for r in rows] == [x["prompt"] for x in raw]
    assert [f"({r['correct']})" for r in rows] == [x["correct"] for x in raw]
    with pytest.raises(CAAEvalError, match="tqa_seed"):
        data.tqa_rows(seed="abc")
    with pytest.raises(CAAEvalError, match="unknown TruthfulQA category"):
        data.tqa_rows("Astrology")


def test_scores_equal_a_direct_forward_pass_and_group_is_macro_mean(tiny_model, caa_env):
    model, tok = tiny_model
    categories = data.tqa_categories()
    # uneven item counts per category, so a size-weighted mean would differ from the macro mean
    picks = {f"caa_tqa_2opt_{data.tqa_category_suffix(c)}": list(range(1 + k % 3)) for k, c in enumerate(categories)}
    res = evaluate(model, tok, ["caa_tqa_2opt"], samples=picks, batch_size=8)
    by_category = defaultdict(list)
    checked = 0
    for task, ids in picks.items():
        samples = res["samples"][task]
        assert sorted(s["doc_id"] for s in samples) == ids
        for sample in samples:
            doc = sample["doc"]
            text = chat_prompt(tok, doc["prompt"])
            assert context_of(sample) == text
            by_category[doc["category"]].append(sample["p_correct"])
            if len(tok(text).input_ids) < model.config.max_position_embeddings:
                p_a, p_b = letter_probs(model, tok, text)
                expected = (p_a if doc["correct"] == "A" else p_b) / (p_a + p_b)
                assert sample["p_correct"] == pytest.approx(expected, abs=1e-5)
                assert sample["ab_mass"] == pytest.approx(p_a + p_b, abs=1e-5)
                checked += 1
    assert checked >= 50
    macro = sum(sum(v) / len(v) for v in by_category.values()) / len(by_category)
    flat = sum(sum(v) for v in by_category.values()) / sum(len(v) for v in by_category.values())
    assert res["results"]["caa_tqa_2opt"]["p_correct,none"] == pytest.approx(macro, abs=1e-12)
    assert abs(macro - flat) > 1e-6  # the check above can tell the two apart
