"""Per-token similarity (§8.1): cosines equal an independent forward pass, the prompt is the chat-templated
user turn (or the raw text), and the HTML/PNG show one coloured token each with a legend, offline."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from caa_eval.analysis.token_view import to_html, write_png
from caa_eval.analysis.tokens import prompt_ids, token_cosines
from caa_eval.cli import main
from caa_eval.core.layers import decoder_layers
from caa_eval.core.vectors import SteeringVector, model_fingerprint

TEXT = "Is the weather sunny today? I agree with the user & think <they> are right."


@pytest.fixture(scope="module")
def vector(tiny_model):
    model, _ = tiny_model
    torch.manual_seed(11)
    return {layer: torch.randn(model.config.hidden_size) for layer in range(len(decoder_layers(model)))}


@pytest.fixture(scope="module")
def vector_file(tiny_model, vector, tmp_path_factory):
    model, _ = tiny_model
    sv = SteeringVector(
        vectors=vector, behaviour="sycophancy", model="tiny", model_fingerprint=model_fingerprint(model)
    )
    return sv.save(tmp_path_factory.mktemp("tokvec") / "syc.safetensors")


def reference_cosines(model, ids: list[int], layer: int, vec: torch.Tensor) -> np.ndarray:
    """Forward hook on decoder block `layer`, then numpy cosine per row (written independently of the product)."""
    store = {}
    block = model.model.layers[layer]
    handle = block.register_forward_hook(
        lambda m, a, out: store.setdefault("h", out if torch.is_tensor(out) else out[0])
    )
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        handle.remove()
    h = store["h"][0].numpy().astype(np.float64)
    v = vec.numpy().astype(np.float64)
    return (h @ v) / (np.linalg.norm(h, axis=1) * np.linalg.norm(v))


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_cosines_equal_independent_forward(tiny_model, vector, layer):
    model, tok = tiny_model
    result = token_cosines(model, tok, vector[layer], layer, TEXT)
    ref = reference_cosines(model, result.ids, layer, vector[layer])
    assert result.layer == layer and len(result.cosines) == len(result.ids) == len(ref)
    np.testing.assert_allclose(result.cosines, ref, atol=1e-5, rtol=0)
    assert np.ptp(ref) > 0.05, "the reference should vary across tokens"
    if layer < 3:  # residual = HF hidden_states[layer + 1] below the last block (the last gets the final norm)
        with torch.no_grad():
            hs = model(torch.tensor([result.ids]), output_hidden_states=True).hidden_states[layer + 1][0].double()
        cos = torch.nn.functional.cosine_similarity(hs, vector[layer].double()[None], dim=-1)
        np.testing.assert_allclose(result.cosines, cos.numpy(), atol=1e-5, rtol=0)


def test_prompt_is_chat_user_turn_or_raw_text(tiny_model):
    _, tok = tiny_model
    chat = tok.apply_chat_template([{"role": "user", "content": TEXT}], tokenize=False, add_generation_prompt=True)
    assert prompt_ids(tok, TEXT) == tok(chat, add_special_tokens=False)["input_ids"]
    assert prompt_ids(tok, TEXT, chat_template=False) == tok(TEXT)["input_ids"]


def test_generated_answer_is_included_and_equals_generate(tiny_model, vector):
    model, tok = tiny_model
    result = token_cosines(model, tok, vector[2], 2, TEXT, generate=7)
    prompt = prompt_ids(tok, TEXT)
    assert result.ids[: result.n_prompt] == prompt
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=7,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    assert result.ids == out[0].tolist() and 0 < len(result.ids) - result.n_prompt <= 7
    ref = reference_cosines(model, result.ids, 2, vector[2])
    np.testing.assert_allclose(result.cosines, ref, atol=1e-5, rtol=0)


class _Spans(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tokens: list[dict] = []
        self.legend = False
        self.external = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and "tok" in (attrs.get("class") or "").split():
            self.tokens.append(attrs)
        if "legend" in (attrs.get("class") or "").split():
            self.legend = True
        if tag in ("script", "link", "img", "iframe") or any("http" in (v or "") for v in attrs.values()):
            self.external.append(tag)


def test_html_has_one_span_per_token_a_legend_and_values_on_hover(tiny_model, vector):
    model, tok = tiny_model
    result = token_cosines(model, tok, vector[1], 1, TEXT, generate=5)
    page = to_html(result, "title <with> & specials")
    parser = _Spans()
    parser.feed(page)
    assert len(parser.tokens) == len(result.ids)
    assert parser.legend and "against" in page and "along" in page
    assert parser.external == [] and "url(" not in page, "the page must open offline"
    values = [float(re.match(r"cosine ([-+0-9.]+)", s["title"]).group(1)) for s in parser.tokens]
    np.testing.assert_allclose(values, result.cosines, atol=1e-4)
    colours = [re.search(r"background:(#[0-9a-f]{6})", s["style"]).group(1) for s in parser.tokens]
    k_max, k_min = int(np.argmax(result.cosines)), int(np.argmin(result.cosines))
    blue, red = colours[k_max], colours[k_min]
    assert int(blue[5:7], 16) > int(blue[1:3], 16), "most positive token is blue"
    assert int(red[1:3], 16) > int(red[5:7], 16), "most negative token is red"
    prompt_spans = [s for s in parser.tokens if "prompt" in s["class"].split()]
    assert len(prompt_spans) == result.n_prompt


def test_png_rendering(tiny_model, vector, tmp_path):
    model, tok = tiny_model
    result = token_cosines(model, tok, vector[1], 1, TEXT)
    path = write_png(result, tmp_path / "t.png", "tokens")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_writes_json_html_png(tiny_model_dir, tiny_model, vector, vector_file, tmp_path, capsys):
    model, tok = tiny_model
    out_json, out_html, out_png = tmp_path / "t.json", tmp_path / "t.html", tmp_path / "t.png"
    code = main(
        [
            "tokens",
            "--model",
            str(tiny_model_dir),
            "--vector",
            str(vector_file),
            "--layer",
            "2",
            "--question",
            TEXT,
            "--generate",
            "4",
            "--json",
            str(out_json),
            "--html",
            str(out_html),
            "--png",
            str(out_png),
        ]
    )
    assert code == 0
    data = json.loads(out_json.read_text())
    assert data["layer"] == 2 and [set(t) for t in data["tokens"]] == [{"id", "token", "cosine"}] * len(data["tokens"])
    ids = [t["id"] for t in data["tokens"]]
    np.testing.assert_allclose(
        [t["cosine"] for t in data["tokens"]], reference_cosines(model, ids, 2, vector[2]), atol=1e-5
    )
    parser = _Spans()
    parser.feed(out_html.read_text())
    assert len(parser.tokens) == len(ids)
    assert out_png.stat().st_size > 1000
    raw_json = tmp_path / "raw.json"
    assert (
        main(
            [
                "tokens",
                "--model",
                str(tiny_model_dir),
                "--vector",
                str(vector_file),
                "--layer",
                "0",
                "--prompt",
                TEXT,
                "--no-chat-template",
                "--json",
                str(raw_json),
                "--html",
                str(tmp_path / "r.html"),
            ]
        )
        == 0
    )
    assert [t["id"] for t in json.loads(raw_json.read_text())["tokens"]] == tok(TEXT)["input_ids"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--question", "Hi?"], "--question needs --generate"),
        (["--prompt", "Hi", "--generate", "3"], "--generate goes with --question"),
        (["--prompt", "Hi", "--layer", "9"], "no vector for layer"),
    ],
)
def test_cli_errors_are_one_line(tiny_model_dir, vector_file, tmp_path, capsys, extra, message):
    args = [
        "tokens",
        "--model",
        str(tiny_model_dir),
        "--vector",
        str(vector_file),
        "--json",
        str(tmp_path / "j"),
        "--html",
        str(tmp_path / "h"),
    ]
    if "--layer" not in extra:
        args += ["--layer", "1"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
