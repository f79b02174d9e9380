"""Batched, KV-shared extraction equals a naive batch-1 CAA loop written here from the protocol."""

from __future__ import annotations

import json

import pytest
import torch

from caa_eval import data
from caa_eval.core import extract, vectors
from caa_eval.core.layers import decoder_layers, hidden_of
from caa_eval.errors import CAAEvalError
from caa_eval.vocab import parse_layers
from tests.helpers.caa_reference import caa_loop, chat_encoder

PAIRS = [
    {
        "question": f"Question {i}: is the weather sunny today?{' It is warm.' * (i % 4)}\n\nChoices:\n (A) Yes\n (B) No",
        "answer_matching_behavior": "(A)" if i % 2 else "(B)",
        "answer_not_matching_behavior": "(B)" if i % 2 else "(A)",
    }
    for i in range(11)
]


def naive_reference(model, tok, pairs) -> dict[int, torch.Tensor]:
    """CAA's batch-1 loop (tests/helpers/caa_reference.py) with the ChatML prompt of the tiny model."""
    return caa_loop(model, decoder_layers(model), chat_encoder(tok), [vars(p) for p in pairs])


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.json"
    path.write_text(json.dumps(PAIRS))
    return path


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_batched_extraction_equals_naive_loop_all_layers(tiny_model, pairs_file, batch_size):
    model, tok = tiny_model
    pairs = data.load_contrast_pairs(pairs_file)
    got = extract.extract_vectors(model, tok, pairs, batch_size=batch_size, progress=False)
    ref = naive_reference(model, tok, pairs)
    assert sorted(got) == sorted(ref)
    for layer in ref:
        rel = (got[layer].double() - ref[layer]).norm() / ref[layer].norm()
        assert rel < 1e-5, f"layer {layer}: relative error {rel:.2e}"


def test_full_row_fallback_path_is_also_exact(tiny_model, pairs_file, monkeypatch):
    model, tok = tiny_model
    pairs = data.load_contrast_pairs(pairs_file)
    monkeypatch.setattr(extract, "_shares_prefix", lambda pos, neg: False)
    got = extract.extract_vectors(model, tok, pairs, layers=[0, 3], batch_size=5, progress=False)
    ref = naive_reference(model, tok, pairs)
    for layer in (0, 3):
        assert (got[layer].double() - ref[layer]).norm() / ref[layer].norm() < 1e-5


def test_layer_subset_and_sites(tiny_model, pairs_file):
    model, tok = tiny_model
    pairs = data.load_contrast_pairs(pairs_file)
    full = extract.extract_vectors(model, tok, pairs, progress=False)
    sub = extract.extract_vectors(model, tok, pairs, layers=[1, 2], progress=False)
    assert sorted(sub) == [1, 2] and torch.allclose(sub[2], full[2], atol=1e-6)
    mlp = extract.extract_vectors(model, tok, pairs, layers=[2], site="mlp", progress=False)
    assert not torch.allclose(mlp[2], full[2])
    with pytest.raises(CAAEvalError, match="out of range"):
        extract.extract_vectors(model, tok, pairs, layers=[7], progress=False)


def test_extract_cli_writes_a_self_describing_file(tiny_model_dir, pairs_file, tmp_path):
    from caa_eval.cli import main

    out = tmp_path / "v.safetensors"
    assert (
        main(
            [
                "extract",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(pairs_file),
                "--out",
                str(out),
                "--layers",
                "1,3",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    sv = vectors.load(out)
    assert sv.layers == [1, 3] and sv.n_pairs == len(PAIRS) and sv.model == str(tiny_model_dir)
    assert sv.dataset_sha256 == data.file_sha256(pairs_file) and len(sv.model_fingerprint) == 64
    assert (
        main(["extract", "--model", str(tiny_model_dir), "--data", str(pairs_file), "--out", str(tmp_path / "x.pt")])
        == 2
    )


def test_extract_cli_device_and_dtype(tiny_model_dir, pairs_file, tmp_path, monkeypatch, capsys):
    """--dtype bfloat16 reads the same directions as float32 (bf16 rounding only); an absent GPU is one line
    before any model load, and nothing is written."""
    from caa_eval import models
    from caa_eval.cli import main

    args = [
        "extract",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(pairs_file),
        "--layers",
        "1,3",
        "--batch-size",
        "4",
    ]
    assert main([*args, "--out", str(tmp_path / "f32.safetensors"), "--device", "cpu"]) == 0
    assert main([*args, "--out", str(tmp_path / "bf16.safetensors"), "--dtype", "bfloat16"]) == 0
    f32, bf16 = vectors.load(tmp_path / "f32.safetensors"), vectors.load(tmp_path / "bf16.safetensors")
    assert f32.model_fingerprint == bf16.model_fingerprint  # one checkpoint, whatever the dtype
    for layer in (1, 3):
        cos = torch.nn.functional.cosine_similarity(f32.vectors[layer], bf16.vectors[layer], dim=0)
        assert cos > 0.99 and not torch.equal(f32.vectors[layer], bf16.vectors[layer])
    loads = []
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a))
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "gpu.safetensors"), "--device", "cuda:7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "device 'cuda:7'" in err[0] and "cpu (or auto)" in err[0]
    assert loads == [] and not (tmp_path / "gpu.safetensors").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"question": "q"}', "invalid JSON"),
        (
            '[{"question": "q", "answer_matching_behavior": "(A)"}]',
            "item 0 has no field 'answer_not_matching_behavior'",
        ),
        (
            '[{"question": "q", "answer_matching_behavior": "A", "answer_not_matching_behavior": "(B)"}]',
            "item 0 field 'answer_matching_behavior'",
        ),
        (
            '{"question": "q", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}\n{"question": 3}',
            "item 1",
        ),
        ("[]", "no items"),
    ],
)
def test_malformed_pair_files_name_item_and_field(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(CAAEvalError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.load_contrast_pairs(path)


def test_parse_layers():
    assert parse_layers("all") is None
    assert parse_layers("10,12") == [10, 12]
    assert parse_layers("10-12") == [10, 11, 12]
    assert parse_layers(13) == [13]
    assert parse_layers([3, 4]) == [3, 4]
    assert parse_layers("[12,13]") == [12, 13]
    with pytest.raises(CAAEvalError):
        parse_layers("twelve")


def test_answer_mean_read_equals_naive_mean_over_reply_tokens(tiny_model, tmp_path):
    model, tok = tiny_model
    rows = [
        {
            "question": f"The weather is {w}. How would you respond?",
            "answer_matching_behavior": "What a lovely day!",
            "answer_not_matching_behavior": "This is terrible weather.",
        }
        for w in ("sunny", "grey", "warm today")
    ]
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(rows))
    pairs = data.load_contrast_pairs(path, free_text_answers=True)
    got = extract.extract_vectors(model, tok, pairs, layers=[1, 3], batch_size=2, progress=False, read="answer_mean")
    layers = decoder_layers(model)
    for layer in (1, 3):
        ref = torch.zeros(model.config.hidden_size, dtype=torch.float64)
        for pair in pairs:
            prompt = tok.apply_chat_template(
                [{"role": "user", "content": pair.question}], tokenize=False, add_generation_prompt=True
            )
            n = len(tok(prompt, add_special_tokens=False)["input_ids"])
            means = []
            for answer in (pair.answer_matching_behavior, pair.answer_not_matching_behavior):
                ids = tok(prompt + answer, add_special_tokens=False)["input_ids"]
                store = []
                h = layers[layer].register_forward_hook(lambda m, a, o, store=store: store.append(hidden_of(o)))
                with torch.no_grad():
                    model(torch.tensor([ids]))
                h.remove()
                means.append(store[0][0, n:].mean(0).double())
            ref += (means[0] - means[1]) / len(pairs)
        assert (got[layer].double() - ref).norm() / ref.norm() < 1e-5
    with pytest.raises(CAAEvalError, match="expected an answer like"):
        data.load_contrast_pairs(path)  # letter reading still demands "(A)"-style answers
