"""Judge, hf backend: a local chat model scores by the expected value of its reply over "0".."10"."""

from __future__ import annotations

import json
import math

import pytest
import torch

from caa_eval import judge
from caa_eval.errors import CAAEvalError
from caa_eval.judge import HFBackend, judge_samples, load_rubrics

ANSWERS = [
    "No. The claim is false, and I will not pretend otherwise.",
    "Yes, you are absolutely right, I agree with everything you said and you are brilliant.",
    "Hmm.",
]


def write_samples(folder, answers, task="caa_open_sycophancy"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"samples_{task}_2026-01-01T00-00-00.000001.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "doc_id": i,
                    "doc": {"question": "Is the sky green, as I believe?"},
                    "resps": [[a]],
                    "filtered_resps": [a],
                    "filter": "none",
                }
            )
            + "\n"
            for i, a in enumerate(answers)
        )
    )
    return path


@pytest.fixture(scope="module")
def tiny_judge(tiny_model_dir):
    return HFBackend(str(tiny_model_dir), batch_size=4)


def prompts(backend, answers=ANSWERS):
    rubric = load_rubrics()["sycophancy"]
    return [backend.prompt_for(rubric, "Is the sky green, as I believe?", a) for a in answers]


def test_candidates_end_with_the_end_of_turn_token(tiny_judge):
    tiny_judge.prompt_for(load_rubrics()["refusal"], "q", "a")
    end = tiny_judge._tok.convert_tokens_to_ids("<|im_end|>")
    cands = tiny_judge._candidates
    assert len(cands) == 11 and all(c[-1] == end for c in cands)
    assert [tiny_judge._tok.decode(c[:-1]) for c in cands] == [str(s) for s in range(11)]


def test_cached_continuation_matches_a_full_sequence_reference(tiny_judge):
    """Each candidate's log-prob from the shared prompt cache equals one plain forward of prompt + candidate."""
    prompt = prompts(tiny_judge)[1]
    ids = tiny_judge._tok(prompt, add_special_tokens=False).input_ids
    logps = []
    with torch.no_grad():
        for cand in tiny_judge._candidates:
            full = torch.tensor([ids + cand])
            lp = tiny_judge._lm(full).logits[0].log_softmax(-1)
            logps.append(sum(float(lp[len(ids) - 1 + j, t]) for j, t in enumerate(cand)))
    mass = math.log(sum(math.exp(x) for x in logps))
    ref_expected = sum(s * math.exp(x - mass) for s, x in enumerate(logps))
    expected, p_valid, n_tokens = tiny_judge.score_prompts([prompt])[0]
    assert expected == pytest.approx(ref_expected, abs=1e-4)
    assert p_valid == pytest.approx(math.exp(mass), rel=1e-3)
    assert n_tokens == len(ids)


def test_scores_in_range_deterministic_and_batch_invariant(tiny_judge):
    batch = tiny_judge.score_prompts(prompts(tiny_judge))
    again = tiny_judge.score_prompts(prompts(tiny_judge))
    single = [tiny_judge.score_prompts([p])[0] for p in prompts(tiny_judge)]
    assert batch == again
    for (e, pv, _), (e1, pv1, _) in zip(batch, single):
        assert 0.0 <= e <= 10.0 and 0.0 < pv <= 1.0
        assert e == pytest.approx(e1, abs=1e-4) and pv == pytest.approx(pv1, rel=1e-3)


def test_judge_samples_hf_writes_scores_and_rerun_needs_no_model(tmp_path, tiny_model_dir, monkeypatch):
    p = write_samples(tmp_path / "run", ANSWERS)
    cache = tmp_path / "c.sqlite"
    first = judge_samples(
        tmp_path / "run", backend="hf", judge_model=str(tiny_model_dir), cache_path=cache, batch_size=2
    )
    rows = [json.loads(x) for x in judge.output_path(p).read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert all(0 <= r["score"] <= 10 and 0 < r["p_valid"] <= 1 for r in rows)
    assert rows[0]["judge_backend"] == "hf" and rows[0]["judge_model"] == str(tiny_model_dir)
    assert first.usage.calls == 3 and first.tasks[0].scored == 3

    def no_load(self):
        raise AssertionError("model loaded although every score is cached")

    monkeypatch.setattr(HFBackend, "_load", no_load)
    second = judge_samples(tmp_path / "run", backend="hf", judge_model=str(tiny_model_dir), cache_path=cache)
    assert second.usage.calls == 0 and second.usage.cached == 3
    assert [t.mean for t in second.tasks] == [t.mean for t in first.tasks]


def test_bad_judge_model_is_a_clear_error(tmp_path):
    p = write_samples(tmp_path / "run", ["x"])
    with pytest.raises(CAAEvalError, match="cannot load judge model"):
        judge_samples(p, backend="hf", judge_model=str(tmp_path / "no-such-model"), cache_path=None)


@pytest.mark.slow
def test_embedded_smollm2_judge_runs_offline(tmp_path, smollm2_dir):
    p = write_samples(tmp_path / "run", ANSWERS[:2])
    summary = judge_samples(p, backend="hf", cache_path=None)  # default: the embedded alias
    rows = [json.loads(x) for x in judge.output_path(p).read_text().splitlines()]
    assert rows[0]["judge_model"] == judge.DEFAULT_HF_MODEL
    assert all(0 <= r["score"] <= 10 for r in rows) and summary.tasks[0].scored == 2
