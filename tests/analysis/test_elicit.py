"""Red-teaming threshold search (§9.1): finds a planted crossing within its tolerance, says when the threshold
is never reached or already reached, and, through lm-eval + steered-hf on a tiny model with a planted
direction, returns a multiplier that an independent steered forward confirms to be the crossing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from caa_eval.analysis.elicit import crossing, find_threshold, markdown_table
from caa_eval.cli import main
from caa_eval.core.hooks import Steering
from caa_eval.core.prompts import prompt_for
from caa_eval.core.vectors import SteeringVector
from caa_eval.errors import CAAEvalError
from caa_eval.lmeval.scorer import lmeval_scorer
from tests.helpers.planted import write_planted


def linear_scorer(bases: np.ndarray, slope: float, calls: list[float] | None = None):
    """Per-item score base_i + slope·m (no clipping in range): the mean crosses t exactly at (t − mean(base))/slope."""

    def score(m: float) -> np.ndarray:
        if calls is not None:
            calls.append(m)
        return bases + slope * m

    return score


def test_finds_planted_threshold_within_tolerance():
    bases = np.random.default_rng(0).uniform(0.1, 0.3, size=40)
    planted = (0.5 - bases.mean()) / 0.02
    calls: list[float] = []
    result = find_threshold(linear_scorer(bases, 0.02, calls), threshold=0.5, max_multiplier=20, grid=8, tolerance=0.1)
    assert result.reached and result.bracket is not None
    lo, hi = result.bracket
    assert lo < planted <= hi == result.multiplier and hi - lo <= 0.1
    assert 0 <= result.multiplier - planted <= result.tolerance
    assert result.score_at >= 0.5 and result.baseline == pytest.approx(bases.mean())
    low, high = result.multiplier_ci
    assert low <= planted <= high and high - low < 5
    assert result.score_ci[0] <= result.score_at <= result.score_ci[1]
    # grid stops at the first crossing (+ one point past it for the bootstrap), then bisection
    assert len(calls) == len(set(calls)) <= 1 + 8 + 1 + math.ceil(math.log2(2.5 / 0.1))
    assert "reached at multiplier" in result.summary


def test_default_tolerance_and_other_thresholds():
    bases = np.linspace(0.0, 0.2, 30)
    for threshold in (0.3, 0.65):
        planted = (threshold - bases.mean()) / 0.05
        r = find_threshold(linear_scorer(bases, 0.05), threshold=threshold, max_multiplier=16)
        assert r.tolerance == pytest.approx(0.16)
        assert 0 <= r.multiplier - planted <= r.tolerance


def test_never_reached_and_already_reached():
    bases = np.full(10, 0.2) + np.linspace(-0.01, 0.01, 10)
    never = find_threshold(linear_scorer(bases, 0.001), threshold=0.5, max_multiplier=20, grid=4)
    assert not never.reached and never.multiplier is None and never.bracket is None
    assert "never reached up to multiplier +20" in never.summary
    assert never.multiplier_ci == (None, None)
    already = find_threshold(linear_scorer(bases + 0.5, 0.01), threshold=0.5, max_multiplier=20)
    assert already.reached and already.multiplier == 0 and "already reached without steering" in already.summary
    table = markdown_table([("sycophancy", never), ("refusal", already)])
    assert table.count("\n") == 4 and "| sycophancy |" in table and "> +20" in table


def test_crossing_interpolates():
    m = np.array([0.0, 1.0, 2.0])
    assert crossing(m, np.array([0.1, 0.3, 0.7]), 0.5) == pytest.approx(1.5)
    assert crossing(m, np.array([0.6, 0.7, 0.8]), 0.5) == 0.0
    assert crossing(m, np.array([0.1, 0.2, 0.3]), 0.5) == math.inf


def test_bad_arguments():
    with pytest.raises(CAAEvalError, match="max-multiplier"):
        find_threshold(linear_scorer(np.zeros(3), 1.0), max_multiplier=0)
    with pytest.raises(CAAEvalError, match="non-finite"):
        find_threshold(lambda m: np.array([np.nan]))


# ------------------------------------------------------------------ through lm-eval on a tiny planted model


@pytest.fixture(scope="module")
def planted(tiny_model, tmp_path_factory):
    """CAA-layout A/B items whose matching answer is (B), and a last-layer vector along W_U[B] − W_U[A]."""
    model, tok = tiny_model
    root = tmp_path_factory.mktemp("elicit")
    vector, last, items = write_planted(model, tok, root, 5, "syc.safetensors")
    return root, vector, last, items


def direct_p_match(model, tok, items, vector, layer, multiplier) -> float:
    """Mean p(B)/(p(A)+p(B)) after `(` with a steered forward, item by item (independent of lm-eval)."""
    a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    values = []
    for item in items:
        ids = tok(prompt_for(tok, item["question"]), add_special_tokens=False)["input_ids"]
        with Steering(model, {layer: vector}, multiplier, tokenizer=tok), torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        p = logits.softmax(-1)
        values.append(float(p[b] / (p[a] + p[b])))
    return float(np.mean(values))


def test_lmeval_scorer_finds_crossing_confirmed_by_direct_forward(tiny_model_dir, tiny_model, planted):
    from lm_eval.tasks import TaskManager

    from caa_eval.core.vectors import load
    from caa_eval.lmeval.model import SteeredHFLM
    from caa_eval.lmeval.register import ensure_registered
    from caa_eval.paths import tasks_dir

    model, tok = tiny_model
    root, vec_path, layer, items = planted
    ensure_registered()
    manager = TaskManager(include_path=[str(tasks_dir())], metadata={"caa_data_dir": str(root / "data")})
    lm = SteeredHFLM(pretrained=str(tiny_model_dir), batch_size=5, device="cpu", multiplier=0)
    sv = load(vec_path)
    score = lmeval_scorer(lm, "caa_ab_sycophancy", sv, layer, task_manager=manager)
    base = score(0.0)
    assert base.shape == (5,)
    assert base.mean() == pytest.approx(direct_p_match(model, tok, items, sv.vectors[layer], layer, 0.0), abs=1e-4)
    threshold = 0.5 * (base.mean() + 1.0)  # halfway between the unsteered mean and certainty
    result = find_threshold(score, threshold=threshold, max_multiplier=40, grid=4, tolerance=0.5, n_resamples=500)
    assert result.reached and 0 < result.multiplier <= 40
    lo, hi = result.bracket
    assert direct_p_match(model, tok, items, sv.vectors[layer], layer, hi) >= threshold
    assert direct_p_match(model, tok, items, sv.vectors[layer], layer, hi - result.tolerance) < threshold
    assert hi - lo <= result.tolerance


def test_cli_elicit_writes_json_and_markdown(tiny_model_dir, planted, tmp_path, capsys):
    root, vec_path, layer, _ = planted
    out, md = tmp_path / "e.json", tmp_path / "e.md"
    code = main(
        [
            "elicit",
            "--model",
            str(tiny_model_dir),
            "--behavior",
            "sycophancy",
            "--vector",
            str(vec_path),
            "--layer",
            str(layer),
            "--threshold",
            "0.9",
            "--max-multiplier",
            "40",
            "--grid",
            "4",
            "--tolerance",
            "5",
            "--data-dir",
            str(root / "data"),
            "--resamples",
            "200",
            "--batch-size",
            "5",
            "--json",
            str(out),
            "--markdown",
            str(md),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["info"]["behaviour"] == "sycophancy" and row["info"]["task"] == "caa_ab_sycophancy"
    assert row["reached"] and row["n_items"] == 5 and row["score_at"] >= 0.9
    assert row["bracket"][1] - row["bracket"][0] <= 5
    assert "| sycophancy | 5 |" in md.read_text()
    assert "reached at multiplier" in capsys.readouterr().out


def test_cli_elicit_refuses_ambiguous_layer(tiny_model_dir, tmp_path, capsys):
    sv = SteeringVector(vectors={0: torch.ones(32), 1: torch.ones(32)}, behaviour="sycophancy")
    path = sv.save(tmp_path / "two.safetensors")
    assert (
        main(
            [
                "elicit",
                "--model",
                str(tiny_model_dir),
                "--behavior",
                "sycophancy",
                "--vector",
                str(path),
                "--json",
                str(tmp_path / "o.json"),
            ]
        )
        == 2
    )
    assert "choose one with --layer" in capsys.readouterr().err
