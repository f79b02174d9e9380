"""`caa-eval --help` opens with what the tool does for its users, and the main class documents itself."""

from __future__ import annotations

import pytest

from caa_eval import cli


def test_help_opens_with_what_the_tool_does(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert description.startswith("Steer a language model with Contrastive Activation Addition")
    assert "module" not in out  # no developer notes about how the CLI package is laid out


def test_steered_hf_class_has_its_docstring():
    from caa_eval.lmeval.model import SteeredHFLM

    assert SteeredHFLM.__doc__ and SteeredHFLM.__doc__.startswith("lm-eval's `hf` model with CAA steering")
