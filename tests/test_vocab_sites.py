"""One site check (`vocab.parse_site`) with one wording, wherever a site is read."""

from __future__ import annotations

import pytest
import torch

from caa_eval.core.hooks import Steering
from caa_eval.core.layers import site_module
from caa_eval.core.vectors import SteeringVector
from caa_eval.errors import CAAEvalError
from caa_eval.vocab import SITES, parse_site

WORDING = "site='embeddings' not understood; write one of residual, mlp, attn"


def test_parse_site_accepts_every_site_and_names_the_remedy():
    assert [parse_site(s) for s in SITES] == list(SITES)
    with pytest.raises(CAAEvalError) as err:
        parse_site("embeddings", source="v.safetensors", hint="or leave it out")
    assert str(err.value) == f"v.safetensors: {WORDING} (or leave it out)"


def test_hooks_layers_and_vector_files_say_it_the_same_way(tiny_model, tmp_path):
    model, tok = tiny_model
    vector = torch.zeros(model.config.hidden_size)
    calls = [
        lambda: Steering(model, {1: vector}, 1.0, "embeddings", tokenizer=tok),
        lambda: site_module(model.model.layers[0], "embeddings"),
        lambda: SteeringVector({1: vector}, site="embeddings").save(tmp_path / "v.safetensors"),
    ]
    messages = []
    for call in calls:
        with pytest.raises(CAAEvalError) as err:
            call()
        messages.append(str(err.value))
    assert all(m.endswith(WORDING) for m in messages), messages
