"""Output labels never lie (folder names come from the RESOLVED steering config), and the CLI's error contract:
bad input is one line and exit 2, -v adds the traceback, an unexpected error is a traceback (a bug report)."""

from __future__ import annotations

import argparse
import types

import pytest
from _harness import record_fault


@pytest.fixture(scope="module")
def tracker_cls():
    from caa_eval.lmeval.register import ensure_registered

    ensure_registered()
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker

    return GeneralConfigTracker


def _folder(tracker_cls, model_args) -> str:
    tracker = tracker_cls()
    tracker.log_experiment_args(
        model_source="steered-hf",
        model_args=model_args,
        system_instruction=None,
        chat_template=None,
        fewshot_as_multiturn=False,
    )
    return tracker.model_name_sanitized


def test_vector_without_multiplier_is_labelled_as_steered_at_x1(inputs, tracker_cls):
    """The issue's case: steered at x1 by default, but the folder said m0 (the baseline's label)."""
    from caa_eval import SteeredHFLM

    vec = inputs["vec"] + "/good.safetensors"
    row = record_fault(
        "label-default-multiplier",
        "output label",
        "lm_eval --model steered-hf --model_args vector=V,layers=1",
        "a vector without multiplier= (steered at the default x1)",
        "output folder and results metadata say m1, from the resolved config",
        "",
        section="check",
    )
    raw = f"pretrained={inputs['tiny']},vector={vec},layers=1"
    lm = SteeredHFLM(pretrained=inputs["tiny"], vector=vec, layers=1, batch_size=2, device="cpu")
    assert lm.steering_config["multiplier"] == 1.0 and lm._steering is not None
    folder = _folder(tracker_cls, raw)
    assert "__steer_L1_m1_residual_" in folder and "_m0_" not in folder, folder
    assert lm.get_model_info()["steering"]["multiplier"] == 1.0  # results.json config.steering
    assert folder.endswith(lm.steering_fingerprint[:8])

    lm.set_steering(vector=vec, layers=[1, 2], multiplier=-2.5, site="mlp")  # a sweep re-steers in place
    folder = _folder(tracker_cls, raw)  # the raw args still say layers=1, no multiplier, no site
    assert "__steer_L1+2_m-2.5_mlp_" in folder, folder
    lm.set_steering(vector=vec, layers=1, multiplier=0)
    zero = _folder(tracker_cls, raw)
    assert "__steer_L1_m0_residual_" in zero
    row["message"] = (
        f"default: …__steer_L1_m1_residual_…; after set_steering(layers=[1,2], multiplier=-2.5, "
        f"site=mlp): …__{folder.split('__')[-1]}; multiplier=0: …__{zero.split('__')[-1]}"
    )
    row["result"] = "pass"


def test_refused_setting_keeps_the_label(inputs, tracker_cls):
    """A steering setting refused by set_steering leaves the model, and so the output label, as it was."""
    from caa_eval import SteeredHFLM
    from caa_eval.errors import CAAEvalError

    vec = inputs["vec"] + "/good.safetensors"
    lm = SteeredHFLM(pretrained=inputs["tiny"], vector=vec, layers=2, multiplier=3, batch_size=2, device="cpu")
    before = _folder(tracker_cls, "pretrained=x")
    with pytest.raises(CAAEvalError, match="runs backwards"):
        lm.set_steering(vector=vec, layers="2-1", multiplier=50)
    assert _folder(tracker_cls, "pretrained=x") == before and "_L2_m3_" in before


def test_unresolved_label_does_not_guess(tracker_cls, monkeypatch):
    """Without a resolved steering config the folder says `unresolved`, never a guessed multiplier."""
    from caa_eval.lmeval import register

    monkeypatch.setattr(register, "resolved_steering", lambda: None)
    assert "__steer_unresolved_" in _folder(tracker_cls, "pretrained=x,vector=v.safetensors")


# ---------------------------------------------------------------------------------------------- CLI contract


def _fake_command(monkeypatch, run):
    from caa_eval import cli

    module = types.SimpleNamespace(configure=lambda p: p.add_argument("x", nargs="?"), run=run)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake", "a test command"))
    real = cli.importlib.import_module
    monkeypatch.setattr(
        cli.importlib, "import_module", lambda name: module if name == "caa_eval.cli.fake" else real(name)
    )
    return cli


def test_bad_input_is_one_line_and_verbose_adds_the_traceback(monkeypatch, capsys):
    """A CAAEvalError is exactly one stderr line and exit 2; with -v the traceback comes first."""
    from caa_eval.errors import CAAEvalError

    def run(args: argparse.Namespace) -> int:
        raise CAAEvalError("--x 3: not allowed; write --x 2")

    cli = _fake_command(monkeypatch, run)
    assert cli.main(["fake"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "caa-eval fake: error: --x 3: not allowed; write --x 2"
    assert cli.main(["-v", "fake"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("caa-eval fake: error: --x 3: not allowed; write --x 2")


def test_unexpected_error_is_a_traceback_not_a_tidy_line(monkeypatch):
    """Any other exception (a bug, a permission problem) propagates as a traceback: a bug report, not bad input."""

    def run(args: argparse.Namespace) -> int:
        raise KeyError("a bug")

    cli = _fake_command(monkeypatch, run)
    with pytest.raises(KeyError):  # the console script prints the traceback: a bug report, not bad input
        cli.main(["fake"])

    def not_a_disk_problem(args: argparse.Namespace) -> int:
        raise PermissionError(13, "Permission denied", "/somewhere")

    cli = _fake_command(monkeypatch, not_a_disk_problem)
    with pytest.raises(PermissionError):
        cli.main(["fake"])


# ---------------------------------------------------------------------------------------------- statistics


def test_p_value_underflow_is_floored_with_a_note_not_zero(tmp_path, capsys):
    """3000 items all moved the same way: the Wilcoxon normal approximation underflows to p = 0.0."""
    import json

    import numpy as np

    from caa_eval import cli
    from caa_eval.stats.tests import P_FLOOR

    row = record_fault(
        "stats-p-underflow",
        "extreme data",
        "caa-eval stats TABLE --json OUT",
        "3000 items, every one moved up by the steering (Wilcoxon p underflows)",
        "p reported as the smallest double with a note, never 0.0",
        "",
        section="check",
    )
    rng = np.random.default_rng(0)
    base = rng.random(3000)
    lines = ["item_id,behaviour,multiplier,score"]
    lines += [f"{i},sycophancy,0,{b}" for i, b in enumerate(base)]
    lines += [f"{i},sycophancy,1,{b + 1 + rng.random()}" for i, b in enumerate(base)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    assert (
        cli.main(["stats", str(tmp_path / "t.csv"), "--json", str(tmp_path / "s.json"), "--n-permutations", "999"]) == 0
    )
    out = capsys.readouterr().out
    cell = [c for c in json.loads((tmp_path / "s.json").read_text())["cells"] if c["multiplier"] == 1][0]
    assert cell["p_wilcoxon"] == P_FLOOR > 0 and "underflow" in cell["note"]
    assert "<1e-4" in out
    row["message"] = f"p_wilcoxon {cell['p_wilcoxon']:.3g}; note: {cell['note']}"
    row["result"] = "pass"


# ---------------------------------------------------------------------------------------------- the harness can fail


VIOLATIONS = [
    "writes",
    "writes_cwd",
    "writes_cache",
    "exit0",
    "two_lines",
    "three_line_message",
    "warning_first",
    "traceback",
    "wrong_text",
    "changes_input",
]


@pytest.mark.parametrize("violation", VIOLATIONS)
def test_harness_catches_each_violation(violation, env):
    """Each rule of `check` really fails a case that breaks it, with stderr counted by the harness's own counter
    (a 3-line message, a warning before the error, a file in the working folder or the user cache); the rows of
    these probes are not kept."""
    import os
    from pathlib import Path

    import _harness
    from _harness import Case, _outcome, check

    def run(e):
        if violation == "writes":
            Path(e.paths["out"], "stray.json").write_text("{}")
        if violation == "writes_cwd":
            Path("stray.json").write_text("{}")  # relative: the working folder
        if violation == "writes_cache":
            Path(os.environ["CAA_EVAL_CACHE"], "stray.json").write_text("{}")
        if violation == "changes_input":
            Path(e.paths["scores"], "good.csv").write_text("changed\n")
        err = {
            "two_lines": "x: error: one\nx: error: two\n",
            "three_line_message": "x: error: bad input, write y\n  because of z\n  see the docs\n",
            "warning_first": "WARNING caa_eval.x: something odd\nx: error: bad input, write y\n",
            "traceback": "Traceback (most recent call last):\nx: error: boom\n",
        }.get(violation, "x: error: bad input, write y\n")
        return _outcome(0 if violation == "exit0" else 2, err)

    keep = len(_harness.ROWS)
    original = Path(env.paths["scores"], "good.csv").read_bytes()
    try:
        with pytest.raises(AssertionError):
            check(
                Case("probe", "probe", "probe", "probe", run, "other" if violation == "wrong_text" else "bad input"),
                env,
            )
    finally:
        del _harness.ROWS[keep:]
        for folder in (env.paths["out"], env.paths["cwd"], env.paths["cache"]):
            Path(folder, "stray.json").unlink(missing_ok=True)
        Path(env.paths["scores"], "good.csv").write_bytes(original)


def test_error_line_counter():
    """The counter behind rule 2: every stderr line counts, except argparse's (wrapped) usage block."""
    from _harness import error_lines

    assert len(error_lines("caa-eval x: error: bad; write y\n")) == 1
    assert len(error_lines("caa-eval x: error: bad; write y\n  detail\n  more detail\n")) == 3
    assert len(error_lines("WARNING a: note\ncaa-eval x: error: bad\n")) == 2
    usage = "usage: caa-eval x [-h] [--a A]\n                  [--b B]\ncaa-eval x: error: argument --a: invalid\n"
    assert error_lines(usage) == ["caa-eval x: error: argument --a: invalid"]


@pytest.mark.parametrize("plant", ["none", "warning", "print", "multiline"])
def test_harness_rejects_a_command_that_says_more_than_one_line(plant, env, monkeypatch):
    """A command path planted to log a warning, print a note to stderr, or raise a 3-line message before its
    error is rejected by `check` run through the real dispatcher; the unplanted control passes."""
    import logging
    import sys

    import _harness
    from _harness import Case, check, cli

    from caa_eval.errors import CAAEvalError

    def run(args: argparse.Namespace) -> int:
        if plant == "warning":
            logging.getLogger("caa_eval.fake").warning("about to fail")
        if plant == "print":
            print("note: about to fail", file=sys.stderr)
        detail = "\n  because of z\n  see the docs" if plant == "multiline" else ""
        raise CAAEvalError("--x 3: not allowed; write --x 2" + detail)

    _fake_command(monkeypatch, run)
    case = Case("plant", "probe", "caa-eval fake", plant, cli("fake", "3"), "--x 3: not allowed")
    keep = len(_harness.ROWS)
    try:
        if plant == "none":
            check(case, env)
        else:
            with pytest.raises(AssertionError, match="error lines"):
                check(case, env)
    finally:
        del _harness.ROWS[keep:]
