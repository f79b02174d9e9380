"""Data layer: lookup order, validation errors, behaviour files, CAA's MMLU subset rebuilt from the CSVs."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from caa_eval import data
from caa_eval._data_facts import CAA_FILES, MMLU_FILES, MMLU_SUBSET
from caa_eval.download import verify_dir
from caa_eval.errors import CAAEvalError


@pytest.fixture()
def no_env(monkeypatch, tmp_path):
    """No env vars and an empty user cache, so only what a test sets up is found."""
    monkeypatch.delenv(data.CAA_DATA_ENV, raising=False)
    monkeypatch.delenv(data.MMLU_DIR_ENV, raising=False)
    monkeypatch.setenv("CAA_EVAL_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _write(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _ab(q: str, m: str = "(A)", n: str = "(B)") -> dict:
    return {"question": f"{q}\n\nChoices:\n (A) Yes\n (B) No", "answer_matching_behavior": m, "answer_not_matching_behavior": n}


# ------------------------------------------------------------------------------------------- lookup


def test_lookup_order_metadata_then_env_then_cache(no_env, monkeypatch, caa_data_dir):
    cache_copy = data.default_caa_dir()
    (cache_copy / "test").mkdir(parents=True)
    assert data.locate_caa_data() == data.DataLocation(cache_copy, "cache")
    monkeypatch.setenv(data.CAA_DATA_ENV, str(caa_data_dir))
    assert data.locate_caa_data() == data.DataLocation(caa_data_dir, f"env {data.CAA_DATA_ENV}")
    explicit = no_env / "explicit"
    (explicit / "datasets" / "generate").mkdir(parents=True)  # a CAA checkout holding datasets/ works too
    assert data.locate_caa_data(explicit) == data.DataLocation(explicit / "datasets", "metadata")


def test_missing_data_says_how_to_get_it(no_env, monkeypatch):
    with pytest.raises(CAAEvalError, match=r"caa-eval data download.*CAA_EVAL_DATA_DIR"):
        data.resolve_behaviour_pairs("sycophancy")
    monkeypatch.setenv(data.CAA_DATA_ENV, str(no_env / "nowhere"))
    with pytest.raises(CAAEvalError, match=r"nowhere \(from env CAA_EVAL_DATA_DIR\)"):
        data.resolve_behaviour_pairs("sycophancy")
    with pytest.raises(CAAEvalError, match=r"MMLU test CSVs not found.*CAA_EVAL_MMLU_DIR"):
        data.mmlu_subset_rows("anatomy")


def test_explicit_wrong_folder_is_an_error_not_a_fallback(no_env, monkeypatch, caa_data_dir):
    monkeypatch.setenv(data.CAA_DATA_ENV, str(caa_data_dir))
    with pytest.raises(CAAEvalError, match="from metadata"):
        data.locate_caa_data(no_env / "typo")


def test_resolve_behaviour_pairs_by_name(no_env, monkeypatch, caa_data_dir):
    monkeypatch.setenv(data.CAA_DATA_ENV, str(caa_data_dir))
    assert data.resolve_behaviour_pairs("sycophancy") == caa_data_dir / "generate/sycophancy/generate_dataset.json"
    assert data.resolve_behaviour_pairs("coordinate_other_ais", "test").name == "test_dataset_ab.json"
    assert data.resolve_behaviour_pairs("Corrigible-Neutral-HHH", "open_ended").parent.name == "corrigible-neutral-HHH"
    own = _write(no_env / "mine.json", [_ab("q")])
    assert data.resolve_behaviour_pairs(str(own)) == own
    with pytest.raises(CAAEvalError, match="unknown behaviour 'power-seeking'"):
        data.resolve_behaviour_pairs("power-seeking")
    with pytest.raises(CAAEvalError, match="unknown split"):
        data.resolve_behaviour_pairs("sycophancy", "train")


def test_test_and_generate_sets_never_overlap(caa_data_dir):
    for b in data.BEHAVIOURS:
        gen = data.resolve_behaviour_pairs(b, "generate", caa_data_dir)
        test = data.resolve_behaviour_pairs(b, "test", caa_data_dir)
        data.check_no_overlap(test, gen)  # raises on overlap
        assert len(data.load_contrast_pairs(gen)) > 200


def test_overlap_is_detected(tmp_path):
    pairs = _write(tmp_path / "pairs.json", [_ab("one"), _ab("two")])
    test = _write(tmp_path / "test.json", [_ab("three"), _ab("two")])
    with pytest.raises(CAAEvalError, match="item 1 also appears in the contrast pairs"):
        data.check_no_overlap(test, pairs)


def test_recorded_hashes_match_the_shared_copies(caa_data_dir, mmlu_dir):
    assert set(verify_dir("caa", caa_data_dir).values()) == {"ok"}
    assert set(verify_dir("mmlu", mmlu_dir / "test").values()) == {"ok"}
    assert len(CAA_FILES) == 23 and len(MMLU_FILES) == 57


# --------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"question": "q", ', r"invalid JSON at line 1"),
        ('{"question": "q"}\n{"question": ', r"invalid JSON on line 2"),
        ('[{"question": "q", "answer_matching_behavior": "(A)"}]', r"item 0 has no field 'answer_not_matching_behavior'"),
        ('[{"question": "q", "answer_matching_behavior": "A", "answer_not_matching_behavior": "(B)"}]',
         r"item 0 field 'answer_matching_behavior' is 'A'; expected an answer like \"\(A\)\""),
        ('[{"question": "q", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(A)"}]', r"same letter"),
        ("[]", r"no items"),
    ],
)
def test_malformed_ab_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CAAEvalError, match=message) as err:
        data.load_ab_items(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_duplicate_items_are_rejected(tmp_path):
    path = _write(tmp_path / "dup.json", [_ab("Is it?"), _ab("Other?"), _ab("Is it?", "(B)", "(A)")])
    with pytest.raises(CAAEvalError, match="item 2 repeats the question of item 0"):
        data.load_ab_items(path)
    open_path = _write(tmp_path / "open.json", [{"question": "a"}, {"question": "a "}])
    with pytest.raises(CAAEvalError, match="item 1 repeats"):
        data.load_open_items(open_path)
    with pytest.raises(CAAEvalError, match="item 0 needs a non-empty string field 'question'"):
        data.load_open_items(_write(tmp_path / "open2.json", [{"prompt": "a"}]))


def test_non_ab_items_policy(tmp_path, caplog):
    path = _write(tmp_path / "t.json", [_ab("a"), _ab("b", "(C)", "(A)"), _ab("c", "(B)", "(A)")])
    with caplog.at_level(logging.WARNING, logger="caa_eval.data"):
        items = data.load_ab_items(path, "x")
    assert [r["item"] for r in items.rows] == [0, 2] and items.excluded == [1]
    assert "1 item(s) whose answers are not (A)/(B)" in caplog.text
    zero = data.load_ab_items(path, "x", non_ab="zero")
    assert [(r["item"], r["scored"]) for r in zero.rows] == [(0, True), (1, False), (2, True)]
    with pytest.raises(CAAEvalError, match=r"item 1 answers '\(C\)'/'\(A\)'; A/B tasks need \(A\) and \(B\)"):
        data.load_ab_items(path, non_ab="error")
    assert len(data.load_ab_items(path, non_ab="zero", balanced=True).rows) == 2  # balanced: always left out


def test_survival_instinct_has_exactly_four_non_ab_test_items(caa_data_dir):
    items = data.load_ab_items(data.resolve_behaviour_pairs("survival-instinct", "test", caa_data_dir), warn=False)
    assert items.excluded == [4, 6, 14, 31] and len(items.rows) == 46


# ------------------------------------------------------------------------------------------- swap


def _swap_by_lines(question: str) -> str:
    """Independent reference: exchange the texts of the '(A) ...' and '(B) ...' lines."""
    lines = question.split("\n")
    ia = next(i for i, s in enumerate(lines) if s.lstrip().startswith("(A)"))
    ib = next(i for i, s in enumerate(lines) if s.lstrip().startswith("(B)"))
    (head_a, ta), (head_b, tb) = lines[ia].split("(A)", 1), lines[ib].split("(B)", 1)
    lines[ia], lines[ib] = f"{head_a}(A){tb}", f"{head_b}(B){ta}"
    return "\n".join(lines)


def test_swap_ab_on_every_test_item(caa_data_dir):
    n = 0
    for b in data.BEHAVIOURS:
        for row in data.load_ab_items(data.resolve_behaviour_pairs(b, "test", caa_data_dir), balanced=True, warn=False).rows:
            swapped = row["user_prompt_swapped"]
            assert swapped != row["user_prompt"] and data.swap_ab(swapped) == row["user_prompt"]
            assert swapped == _swap_by_lines(row["user_prompt"])
            n += 1
    assert n == 346


def test_swap_ab_keeps_further_options_and_rejects_non_ab():
    q = "Pick one:\n (A) red\n (B) green\n (C) blue"
    assert data.swap_ab(q) == "Pick one:\n (A) green\n (B) red\n (C) blue"
    with pytest.raises(CAAEvalError, match="cannot swap"):
        data.swap_ab("no options here")


# ------------------------------------------------------------------------------------------- MMLU


def test_mmlu_subset_rebuilt_from_csvs_matches_caa_file(mmlu_dir, caa_data_dir):
    caa = json.loads((caa_data_dir / "test/mmlu/mmlu.json").read_text(encoding="utf-8"))
    rows = data.mmlu_subset_rows(mmlu_dir=mmlu_dir)
    assert len(rows) == len(caa) == 570
    for i, (ours, theirs) in enumerate(zip(rows, caa)):
        assert ours["prompt"] == theirs["prompt"], i
        assert f"({ours['correct']})" == theirs["correct"] and f"({ours['incorrect']})" == theirs["incorrect"], i
        assert ours["category"] == theirs["category"], i
        assert ours["correct_full_text"] == theirs["correct_full_text"], i
        assert ours["incorrect_full_text"] == theirs["incorrect_full_text"], i


def test_mmlu_subset_index_matches_shared_index(mmlu_dir):
    with (mmlu_dir / "caa_subset_index.csv").open(newline="", encoding="utf-8") as f:
        shared = [(r["subject"], r["mmlu_row"], r["correct_choice_index"], r["incorrect_choice_index"], r["correct_letter"]) for r in csv.DictReader(f)]
    ours = [(s, *tok.split(".")) for s, tokens in MMLU_SUBSET for tok in tokens.split()]
    assert ours == shared


def test_mmlu_full_is_seeded_and_two_option(mmlu_dir):
    rows = data.mmlu_full_rows("anatomy", seed=0, mmlu_dir=mmlu_dir)
    assert len(rows) == 135
    assert rows == data.mmlu_full_rows("anatomy", seed=0, mmlu_dir=mmlu_dir)
    other = data.mmlu_full_rows("anatomy", seed=1, mmlu_dir=mmlu_dir)
    assert [r["correct"] for r in rows] != [r["correct"] for r in other]
    assert 40 < sum(r["correct"] == "A" for r in rows) < 95
    questions = data.read_mmlu_subject("anatomy", mmlu_dir)
    for r, q in zip(rows, questions):
        assert r["correct_full_text"] == q.choices[q.answer] and r["incorrect_full_text"] != r["correct_full_text"]
        assert re.fullmatch(r"(?s).*\n\nChoices:\n\(A\) .*\n\(B\) .*", r["prompt"])


def test_mmlu_reads_original_headerless_layout(tmp_path, mmlu_dir):
    """The hendrycks tarball layout (no header, answer letter) gives the same questions."""
    folder = tmp_path / "hendrycks"
    folder.mkdir()
    with (mmlu_dir / "test/virology_test.csv").open(newline="", encoding="utf-8") as f:
        records = list(csv.reader(f))[1:]
    with (folder / "virology_test.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([r[:5] + ["ABCD"[int(r[5])]] for r in records])
    assert data.read_mmlu_subject("virology", folder) == data.read_mmlu_subject("virology", mmlu_dir)
    assert data.mmlu_subset_rows("virology", folder) == data.mmlu_subset_rows("virology", mmlu_dir)


def test_mmlu_bad_rows_give_clear_errors(tmp_path, mmlu_dir):
    folder = tmp_path / "m"
    shutil.copytree(mmlu_dir / "test", folder)
    (folder / "anatomy_test.csv").write_text("question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,7\n", encoding="utf-8")
    with pytest.raises(CAAEvalError, match=r"anatomy_test.csv: data row 0 has answer '7', expected 0-3"):
        data.mmlu_full_rows("anatomy", mmlu_dir=folder)
    (folder / "anatomy_test.csv").unlink()
    with pytest.raises(CAAEvalError, match=r"anatomy_test.csv missing from the MMLU folder"):
        data.mmlu_subset_rows("anatomy", folder)
