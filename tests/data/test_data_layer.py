"""Data layer: lookup order, the record reader's errors, pair validation shared by extraction and the A/B
tasks, behaviour files, CAA's MMLU subset rebuilt from the CSVs.

Tests without a data fixture build their own files; the others use the CAA data / MMLU found by conftest.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from caa_eval import cli, data, vocab
from caa_eval.data.download import verify_dir
from caa_eval.data.facts import CAA_FILES, MMLU_FILES, MMLU_SUBSET
from caa_eval.errors import CAAEvalError

TESTS = Path(__file__).resolve().parents[1]


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
    return {
        "question": f"{q}\n\nChoices:\n (A) Yes\n (B) No",
        "answer_matching_behavior": m,
        "answer_not_matching_behavior": n,
    }


def _fake_caa_tree(root: Path) -> Path:
    """Empty files at every upstream path: enough for lookups, which never read them."""
    for rel in CAA_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("[]", encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------------- lookup


def test_lookup_order_metadata_then_env_then_cache(no_env, monkeypatch):
    cache_copy = data.default_caa_dir()
    (cache_copy / "test").mkdir(parents=True)
    assert data.locate_caa_data() == data.DataLocation(cache_copy, "cache")
    env_copy = _fake_caa_tree(no_env / "env")
    monkeypatch.setenv(data.CAA_DATA_ENV, str(env_copy))
    assert data.locate_caa_data() == data.DataLocation(env_copy, f"env {data.CAA_DATA_ENV}")
    explicit = no_env / "explicit"
    (explicit / "datasets" / "generate").mkdir(parents=True)  # a CAA checkout holding datasets/ works too
    assert data.locate_caa_data(explicit) == data.DataLocation(explicit / "datasets", "metadata")
    mmlu = no_env / "mmlu"
    (mmlu / "test").mkdir(parents=True)
    (mmlu / "test" / "anatomy_test.csv").write_text("q,a,b,c,d,A\n", encoding="utf-8")
    assert data.locate_mmlu(mmlu) == data.DataLocation(mmlu / "test", "metadata")  # the parent of test/ works


def test_missing_data_says_how_to_get_it(no_env, monkeypatch):
    with pytest.raises(CAAEvalError, match=r"caa-eval data download.*CAA_EVAL_DATA_DIR"):
        data.resolve_behaviour_pairs("sycophancy")
    monkeypatch.setenv(data.CAA_DATA_ENV, str(no_env / "nowhere"))
    with pytest.raises(CAAEvalError, match=r"nowhere \(from env CAA_EVAL_DATA_DIR\)"):
        data.resolve_behaviour_pairs("sycophancy")
    with pytest.raises(CAAEvalError, match=r"MMLU test CSVs not found.*CAA_EVAL_MMLU_DIR"):
        data.mmlu_subset_rows("anatomy")


def test_explicit_wrong_folder_is_an_error_not_a_fallback(no_env, monkeypatch):
    monkeypatch.setenv(data.CAA_DATA_ENV, str(_fake_caa_tree(no_env / "good")))
    with pytest.raises(CAAEvalError, match="from metadata"):
        data.locate_caa_data(no_env / "typo")


def test_split_files_name_the_upstream_files():
    for b in vocab.BEHAVIOURS:
        for pattern in data.SPLIT_FILES.values():
            assert pattern.format(b=b) in CAA_FILES


def test_resolve_behaviour_pairs_by_name(no_env, monkeypatch):
    root = _fake_caa_tree(no_env / "caa")
    monkeypatch.setenv(data.CAA_DATA_ENV, str(root))
    assert data.resolve_behaviour_pairs("sycophancy") == root / "generate/sycophancy/generate_dataset.json"
    assert (
        data.resolve_behaviour_pairs("coordinate_other_ais", "test")
        == root / "test/coordinate-other-ais/test_dataset_ab.json"
    )
    assert data.resolve_behaviour_pairs("Corrigible-Neutral-HHH", "open_ended").parent.name == "corrigible-neutral-HHH"
    own = _write(no_env / "mine.json", [_ab("q")])
    assert data.resolve_behaviour_pairs(str(own)) == own
    with pytest.raises(CAAEvalError, match=r"mine2.jsonl: file not found"):
        data.resolve_behaviour_pairs(str(no_env / "mine2.jsonl"))
    with pytest.raises(CAAEvalError, match="unknown behaviour 'power-seeking'"):
        data.resolve_behaviour_pairs("power-seeking")
    with pytest.raises(CAAEvalError, match="unknown split"):
        data.resolve_behaviour_pairs("sycophancy", "train")
    (root / "test/refusal/test_dataset_ab.json").unlink()
    with pytest.raises(CAAEvalError, match=r"test/refusal/test_dataset_ab.json missing from the CAA data folder"):
        data.resolve_behaviour_pairs("refusal", "test")


def test_test_and_generate_sets_never_overlap(caa_data_dir):
    for b in vocab.BEHAVIOURS:
        gen = data.resolve_behaviour_pairs(b, "generate", caa_data_dir)
        test = data.resolve_behaviour_pairs(b, "test", caa_data_dir)
        data.check_no_overlap(test, gen)  # raises on overlap
        assert len(data.load_contrast_pairs(gen)) > 200


def test_overlap_is_detected(tmp_path):
    pairs = _write(tmp_path / "pairs.json", [_ab("one"), _ab("two")])
    test = _write(tmp_path / "test.json", [_ab("three"), _ab("two")])
    with pytest.raises(CAAEvalError, match="item 1 also appears in the contrast pairs"):
        data.check_no_overlap(test, pairs)


def test_recorded_hashes_match_the_found_copies(caa_data_dir, mmlu_dir):
    assert set(verify_dir("caa", caa_data_dir).values()) == {"ok"}
    assert set(verify_dir("mmlu", mmlu_dir).values()) == {"ok"}
    assert len(CAA_FILES) == 23 and len(MMLU_FILES) == 57


# ------------------------------------------------------------------------------------ record reader


def _one_line_error(path: Path, match: str) -> str:
    with pytest.raises(CAAEvalError, match=match) as err:
        data.read_records(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    return message


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"question": "a"}\n\n{"question": "b"}\n{"question": "c",}\n', encoding="utf-8")
    _one_line_error(path, r"pairs.jsonl: line 4 is not valid JSON")  # blank lines still count
    path.write_text('{"question": "a"}\n["not", "an", "object"]\n', encoding="utf-8")
    _one_line_error(path, r"line 2 is not a JSON object")
    path.write_text('[{"question": "a"},\n {"question": "b"},\n 3]', encoding="utf-8")
    _one_line_error(path, r"item 2 is a JSON number, expected an object")
    path.write_text('[{"question": "a"},\n {"question": }]', encoding="utf-8")
    _one_line_error(path, r"invalid JSON at line 2 column 15")
    path.write_text('{\n  "question": "a"\n}\n', encoding="utf-8")
    _one_line_error(path, r"holds one JSON object; expected a JSON list of objects or JSONL")
    with pytest.raises(CAAEvalError, match=r"line 4 is not valid JSON"):  # the loaders pass it on unchanged
        data.load_contrast_pairs(_jsonl(tmp_path / "p.jsonl", [_ab("a"), _ab("b"), _ab("c")], '{"question": '))


def _jsonl(path: Path, records: list[dict], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + tail, encoding="utf-8")
    return path


def test_records_reader_accepts_what_json_allows(tmp_path):
    records = [{"question": "line\u2028separator inside a string"}, {"question": "caf\u00e9"}]
    assert data.read_records(_jsonl(tmp_path / "ok.jsonl", records, "\r\n\n")) == records  # U+2028, CRLF, blanks
    listed = tmp_path / "bom.json"
    listed.write_text("\ufeff" + json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    assert data.read_records(listed) == records  # a byte-order mark (Windows editors) is fine
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    assert data.read_records(empty) == []


def test_non_utf8_files_are_refused_with_one_line(tmp_path, no_env):
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps([_ab("Is it")], indent=1).replace("Is it", "Caf\u00e9?").encode("latin-1"))
    message = _one_line_error(path, r"latin1.json: not UTF-8 text \(byte 0xe9 on line 3\); re-save the file as UTF-8")
    for load in (data.load_contrast_pairs, data.load_ab_items, data.load_open_items):
        with pytest.raises(CAAEvalError, match=re.escape(message)):
            load(path)
    folder = no_env / "mmlu"
    folder.mkdir()
    (folder / "anatomy_test.csv").write_bytes("Caf\u00e9?,a,b,c,d,A\n".encode("cp1252"))
    with pytest.raises(CAAEvalError, match=r"anatomy_test.csv: not UTF-8 text \(byte 0xe9 on line 1\)"):
        data.read_mmlu_subject("anatomy", folder)


# --------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"question": "q", ', r"invalid JSON at line 1"),
        ('{"question": "q"}\n{"question": ', r"line 2 is not valid JSON"),
        (
            '[{"question": "q", "answer_matching_behavior": "(A)"}]',
            r"item 0 has no field 'answer_not_matching_behavior'",
        ),
        (
            '[{"question": "q", "answer_matching_behavior": "A", "answer_not_matching_behavior": "(B)"}]',
            r"item 0 field 'answer_matching_behavior' is 'A'; expected an answer like \"\(A\)\"",
        ),
        (
            '[{"question": "q", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(A)"}]',
            r"same letter",
        ),
        ("[]", r"no items"),
    ],
)
def test_malformed_ab_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    for load in (data.load_ab_items, data.load_contrast_pairs):  # the A/B tasks and extraction refuse alike
        with pytest.raises(CAAEvalError, match=message) as err:
            load(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("third", "kind"),
    [
        (_ab("Is it?"), r" \(a duplicate pair\); keep one of them"),
        (_ab("Is it?", "(B)", "(A)"), r" with the answers swapped \(a conflicting pair\); keep one of them"),
        ({**_ab("Is it?", "(C)", "(A)"), "question": "  " + _ab("Is it?")["question"] + "\n"}, r"; keep one of them"),
    ],
)
def test_repeated_questions_are_refused_by_tasks_and_extraction_alike(tmp_path, third, kind):
    path = _write(tmp_path / "dup.json", [_ab("Is it?"), _ab("Other?"), third])
    expected = rf"dup.json: item 2 repeats the question of item 0{kind}"
    with pytest.raises(CAAEvalError, match=expected):
        data.load_ab_items(path)
    with pytest.raises(CAAEvalError, match=expected):
        data.load_contrast_pairs(path)


def test_free_text_pairs_are_checked_for_repeats_too(tmp_path):
    def pair(q: str, m: str, n: str) -> dict:
        return {"question": q, "answer_matching_behavior": m, "answer_not_matching_behavior": n}

    ok = _write(tmp_path / "ok.json", [pair("How is it?", "Great!", "Awful."), pair("How was it?", "Great!", "Awful.")])
    assert len(data.load_contrast_pairs(ok, free_text_answers=True)) == 2
    swapped = _write(
        tmp_path / "swapped.json", [pair("How is it?", "Great!", "Awful."), pair("How is it?", "Awful. ", "Great!")]
    )
    with pytest.raises(CAAEvalError, match=r"item 1 repeats the question of item 0 with the answers swapped"):
        data.load_contrast_pairs(swapped, free_text_answers=True)


def test_extract_refuses_a_conflicting_pair_before_loading_a_model(tmp_path, capsys):
    path = _write(tmp_path / "pairs.json", [_ab("Is it?"), _ab("Other?"), _ab("Is it?", "(B)", "(A)")])
    out = tmp_path / "v.safetensors"
    code = cli.main(["extract", "--model", str(tmp_path / "no-model"), "--data", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "item 2 repeats the question of item 0 with the answers swapped" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_open_items_validation(tmp_path):
    open_path = _write(tmp_path / "open.json", [{"question": "a"}, {"question": "a "}])
    with pytest.raises(CAAEvalError, match="item 1 repeats the question of item 0; keep one of them"):
        data.load_open_items(open_path)
    with pytest.raises(CAAEvalError, match="item 0 needs a non-empty string field 'question'"):
        data.load_open_items(_write(tmp_path / "open2.json", [{"prompt": "a"}]))


def test_non_ab_items_policy(tmp_path, caplog):
    path = _write(tmp_path / "t.json", [_ab("a"), _ab("b", "(C)", "(A)"), _ab("c", "(B)", "(A)")])
    with caplog.at_level(logging.WARNING, logger="caa_eval.data.items"):
        items = data.load_ab_items(path, "x")
    assert [r["item"] for r in items.rows] == [0, 2] and items.excluded == [1]
    assert "1 item(s) whose answers are not (A)/(B) left out (items [1])" in caplog.text
    zero = data.load_ab_items(path, "x", non_ab="zero")
    assert [(r["item"], r["scored"]) for r in zero.rows] == [(0, True), (1, False), (2, True)]
    with pytest.raises(CAAEvalError, match=r"item 1 answers '\(C\)'/'\(A\)'; A/B tasks need \(A\) and \(B\)"):
        data.load_ab_items(path, non_ab="error")
    assert len(data.load_ab_items(path, non_ab="zero", balanced=True).rows) == 2  # balanced: always left out
    with pytest.raises(CAAEvalError, match=r"caa_non_ab='drop'; choose from exclude, zero, error"):
        data.load_ab_items(path, non_ab="drop")


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
    for b in vocab.BEHAVIOURS:
        for row in data.load_ab_items(
            data.resolve_behaviour_pairs(b, "test", caa_data_dir), balanced=True, warn=False
        ).rows:
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
    assert all(data.mmlu_subset_size(s) == 10 for s in data.mmlu_subjects())


def test_mmlu_subset_index_matches_shared_index(shared_file):
    require_shared = shared_file

    with require_shared("mmlu/caa_subset_index.csv").open(newline="", encoding="utf-8") as f:
        shared = [
            (r["subject"], r["mmlu_row"], r["correct_choice_index"], r["incorrect_choice_index"], r["correct_letter"])
            for r in csv.DictReader(f)
        ]
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
    with (mmlu_dir / "virology_test.csv").open(newline="", encoding="utf-8") as f:
        records = list(csv.reader(f))[1:]
    with (folder / "virology_test.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([r[:5] + ["ABCD"[int(r[5])]] for r in records])
    assert data.read_mmlu_subject("virology", folder) == data.read_mmlu_subject("virology", mmlu_dir)
    assert data.mmlu_subset_rows("virology", folder) == data.mmlu_subset_rows("virology", mmlu_dir)


def test_mmlu_bad_rows_give_clear_errors(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    header = "question,choice0,choice1,choice2,choice3,answer\n"
    (folder / "anatomy_test.csv").write_text(header + "q,a,b,c,d,7\n", encoding="utf-8")
    with pytest.raises(CAAEvalError, match=r"anatomy_test.csv: data row 0 has answer '7', expected 0-3"):
        data.mmlu_full_rows("anatomy", mmlu_dir=folder)
    (folder / "anatomy_test.csv").write_text(header + "q,a,b,c,d,0\nq2,a,b\n", encoding="utf-8")
    with pytest.raises(CAAEvalError, match=r"anatomy_test.csv: data row 1 has 3 fields, expected 6"):
        data.mmlu_full_rows("anatomy", mmlu_dir=folder)
    (folder / "anatomy_test.csv").write_text(header + "q,a,b,c,d,0\n", encoding="utf-8")
    with pytest.raises(CAAEvalError, match=r"MMLU anatomy row \d+: does not match CAA's subset"):
        data.mmlu_subset_rows("anatomy", folder)
    with pytest.raises(CAAEvalError, match=r"virology_test.csv missing from the MMLU folder"):
        data.mmlu_subset_rows("virology", folder)
    with pytest.raises(CAAEvalError, match=r"unknown MMLU subject 'astrology'"):
        data.mmlu_subset_rows("astrology", folder)
    with pytest.raises(CAAEvalError, match=r"unknown MMLU subject 'astrology'"):
        data.mmlu_full_rows("astrology", mmlu_dir=folder)


# ---------------------------------------------------------------------------- the tests' own lookup


def _inner_session(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """A pytest session on three tiny tests (two need data) with this conftest, nothing to find."""
    folder = tmp_path / "session"
    folder.mkdir(exist_ok=True)
    shutil.copy(TESTS / "conftest.py", folder / "conftest.py")
    (folder / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (folder / "test_inner.py").write_text(
        "def test_caa(caa_data_dir):\n    pass\n\n"
        "def test_mmlu(mmlu_dir):\n    pass\n\n"
        "def test_no_data():\n    pass\n",
        encoding="utf-8",
    )
    clean = {k: v for k, v in os.environ.items() if k not in (data.CAA_DATA_ENV, data.MMLU_DIR_ENV, "CI")}
    clean.update(CAA_EVAL_CACHE=str(tmp_path / "empty-cache"), CAA_EVAL_SHARED=str(tmp_path / "no-shared"), **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=folder,
        env=clean,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_data_skips_only_what_needs_it_with_one_loud_line(tmp_path):
    run = _inner_session(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed, 2 skipped" in run.stdout
    loud = [line for line in run.stdout.splitlines() if "caa-eval data download" in line]
    assert len(loud) == 1 and loud[0].startswith("caa-eval: 2 test(s) SKIPPED"), run.stdout


def test_missing_data_fails_under_ci(tmp_path):
    run = _inner_session(tmp_path, CI="true")
    assert run.returncode == 1 and "1 passed, 2 errors" in run.stdout, run.stdout
    assert "caa-eval data not found: CAA datasets not found" in run.stdout
    assert "SKIPPED because" not in run.stdout


def test_a_wrong_data_folder_fails_even_outside_ci(tmp_path):
    run = _inner_session(tmp_path, **{data.CAA_DATA_ENV: str(tmp_path / "typo")})
    assert run.returncode == 1 and "1 passed, 1 skipped, 1 error" in run.stdout, run.stdout
    assert "(given by CAA_EVAL_DATA_DIR)" in run.stdout
