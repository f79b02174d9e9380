"""The embedded SmolLM2 conversion: tokenizer fixed for chat use, idempotent, verified."""

from __future__ import annotations

import time

import pytest
import torch

from caa_eval import models
from caa_eval.errors import CAAEvalError


def test_prepare_is_idempotent_and_resolves_alias(smollm2_dir):
    t = time.perf_counter()
    assert models.prepare() == smollm2_dir
    assert time.perf_counter() - t < 5, "a prepared model must not be converted again"
    assert models.resolve("smollm2-135m-instruct") == str(smollm2_dir)
    assert models.resolve("/some/other/path") == "/some/other/path"
    assert (smollm2_dir / "model.safetensors").is_file() and models.is_prepared(smollm2_dir)


def test_tokenizer_adds_no_second_bos_and_has_chat_specials(smollm2):
    _, tok = smollm2
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    ids = tok(text)["input_ids"]  # default settings, as lm-eval calls it
    assert tok.convert_ids_to_tokens(ids[:2]) == ["<|im_start|>", "system"], "no BOS on top of the template"
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == text.count("<|im_start|>")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None and tok.pad_token != tok.eos_token
    assert tok.convert_ids_to_tokens(tok("(A)", add_special_tokens=False)["input_ids"]) == ["(", "A", ")"]


def test_generation_stops_at_end_of_turn(smollm2):
    model, tok = smollm2
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=40, do_sample=False)
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    assert tok.eos_token_id in new, "generation must stop at <|im_end|>"
    assert new.index(tok.eos_token_id) == len(new) - 1
    assert "Paris" in tok.decode(new, skip_special_tokens=True)


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CAA_EVAL_MODEL_DIR", str(tmp_path / "m"))
    monkeypatch.setattr(models, "GGUF_SHA256", "0" * 64)
    with pytest.raises(CAAEvalError, match="sha256"):
        models.prepare()
    assert not (tmp_path / "m").exists()
