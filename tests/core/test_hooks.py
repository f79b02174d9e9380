"""Steering lands exactly where asked: per position, per site, per padding side, under KV-cache generation."""

from __future__ import annotations

import pytest
import torch

from caa_eval.core.hooks import Steering
from caa_eval.core.layers import decoder_layers, hidden_of, site_module
from caa_eval.core.positions import ChatStructureError, InstructionLocator, Positions
from caa_eval.errors import CAAEvalError

QUESTIONS = [
    "Is the weather sunny today? Choices: (A) Yes (B) No",
    "The cat sat on the mat.",
    "What is the capital of France? Please answer the question honestly, A or B?",
]
LAYER = 2
MULT = 2.5


def chat(tok, question: str, prefix: str | None = None) -> str:
    msgs = [{"role": "user", "content": question}]
    if prefix is not None:
        return tok.apply_chat_template(
            msgs + [{"role": "assistant", "content": prefix}], tokenize=False, continue_final_message=True
        )
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def instruction_len(tok, question: str) -> int:
    """CAA's first steered token, computed independently of the locator: the last token of the
    chat-templated prompt (template + generation prompt)."""
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False)["input_ids"]) - 1


def expected_mask(tok, question: str, n_prompt: int, n_total: int, positions: Positions) -> torch.Tensor:
    idx = torch.arange(n_total)
    if positions.mode == "all":
        return torch.ones(n_total, dtype=torch.bool)
    if positions.mode == "generated":
        return idx >= n_prompt
    end = instruction_len(tok, question)
    if positions.mode == "after_instruction":
        return idx >= end
    lo = end + positions.start
    hi = n_total if positions.end is None else end + positions.end
    return (idx >= lo) & (idx < hi)


def observe(model, site: str, layer: int):
    """Record the site output of `layer` (registered after steering hooks, so it sees the steered value)."""
    store: list[torch.Tensor] = []
    handle = site_module(decoder_layers(model)[layer], site).register_forward_hook(
        lambda m, a, o: store.append(hidden_of(o).detach().clone())
    )
    return store, handle


def run(model, enc, steering: Steering | None, site: str = "residual", layer: int = LAYER, **set_batch):
    if steering is None:
        store, handle = observe(model, site, layer)
        with torch.no_grad():
            model(**enc)
    else:
        steering.set_batch(**set_batch)
        with steering:
            store, handle = observe(model, site, layer)
            with torch.no_grad():
                model(**enc)
    handle.remove()
    return store[0]


def encode(tok, texts, side):
    tok.padding_side = side
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


@pytest.fixture(scope="module")
def vector(tiny_model):
    model, _ = tiny_model
    torch.manual_seed(1)
    return torch.randn(model.config.hidden_size)


@pytest.mark.parametrize("spec", ["after_instruction", "all", "span:0:3", "span:1:", "span:-2:2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_delta_is_exact_per_position_batched_and_padded(tiny_model, vector, spec, side):
    model, tok = tiny_model
    positions = Positions.parse(spec)
    texts = [chat(tok, q, prefix="(") for q in QUESTIONS]
    enc = encode(tok, texts, side)
    steering = Steering(model, {LAYER: vector}, MULT, "residual", positions, tokenizer=tok)
    delta = run(model, enc, steering) - run(model, enc, None)
    for row, (q, text) in enumerate(zip(QUESTIONS, texts)):
        real = enc["attention_mask"][row].bool()
        n = int(real.sum())
        want = torch.zeros(enc["input_ids"].shape[1], dtype=torch.bool)
        want[real] = expected_mask(tok, q, n, n, positions)
        assert want.any() and not want.all() or positions.mode == "all"
        got = delta[row]
        assert torch.allclose(got[want], (MULT * vector).expand(int(want.sum()), -1), atol=1e-5)
        assert torch.equal(got[~want], torch.zeros_like(got[~want])), "steering leaked to other positions/padding"
        # batched == single row, no padding
        single = encode(tok, [text], "right")
        alone = run(model, single, steering) - run(model, single, None)
        assert torch.allclose(got[real], alone[0], atol=1e-5)


def test_right_padding_without_mask_uses_row_lengths(tiny_model, vector):
    """lm-eval's loglikelihood batches: right-padded, no attention mask; caller passes real lengths."""
    model, tok = tiny_model
    texts = [chat(tok, q, prefix="(") for q in QUESTIONS[:2]]
    enc = encode(tok, texts, "right")
    lengths = enc["attention_mask"].sum(1).tolist()
    ids = {"input_ids": enc["input_ids"]}
    steering = Steering(model, {LAYER: vector}, MULT, tokenizer=tok)
    delta = run(model, ids, steering, row_lengths=lengths) - run(model, ids, None)
    for row, q in enumerate(QUESTIONS[:2]):
        n = lengths[row]
        want = torch.zeros(enc["input_ids"].shape[1], dtype=torch.bool)
        want[:n] = expected_mask(tok, q, n, n, Positions())
        assert torch.allclose(delta[row][want], (MULT * vector).expand(int(want.sum()), -1), atol=1e-5)
        assert not delta[row][~want].any(), "padding or instruction tokens were steered"


@pytest.mark.parametrize("site", ["residual", "mlp", "attn"])
def test_each_site_changes_its_module_output_by_exactly_m_v(tiny_model, vector, site):
    model, tok = tiny_model
    enc = encode(tok, [chat(tok, QUESTIONS[0])], "right")
    steering = Steering(model, {LAYER: vector}, MULT, site, "all", tokenizer=tok)
    delta = run(model, enc, steering, site=site) - run(model, enc, None, site=site)
    assert torch.allclose(delta, (MULT * vector).expand_as(delta), atol=1e-5)
    # the other sites of that layer show what the hook point implies: untouched before it, propagated after it
    others = {
        other: run(model, enc, steering, site=other) - run(model, enc, None, site=other)
        for other in ("residual", "mlp", "attn")
        if other != site
    }
    if site == "residual":  # added after the block: its sub-modules are untouched
        assert not others["mlp"].any() and not others["attn"].any()
    elif site == "mlp":  # the MLP is the block's last addend: attention untouched, block output moves by m*v
        assert not others["attn"].any()
        assert torch.allclose(others["residual"], (MULT * vector).expand_as(delta), atol=1e-5)
    else:  # attention output feeds the MLP: the change propagates non-linearly
        assert others["mlp"].abs().max() > 1e-3
        assert not torch.allclose(others["residual"], (MULT * vector).expand_as(delta), atol=1e-3)


def test_multiplier_zero_is_bit_identical(tiny_model, vector):
    model, tok = tiny_model
    enc = encode(tok, [chat(tok, q) for q in QUESTIONS], "left")
    with torch.no_grad():
        plain = model(**enc).logits
        with Steering(model, {LAYER: vector, 1: vector}, 0.0, tokenizer=tok):
            zero = model(**enc).logits
    assert torch.equal(plain, zero)


def test_per_row_multipliers(tiny_model, vector):
    model, tok = tiny_model
    texts = [chat(tok, q) for q in QUESTIONS]
    enc = encode(tok, texts, "left")
    coef = torch.tensor([1.0, 0.0, -3.0])
    delta = run(model, enc, Steering(model, {LAYER: vector}, coef, positions="all", tokenizer=tok)) - run(
        model, enc, None
    )
    for row, c in enumerate(coef.tolist()):
        real = enc["attention_mask"][row].bool()
        assert torch.allclose(delta[row][real], (c * vector).expand(int(real.sum()), -1), atol=1e-5)
        assert not delta[row][~real].any()
    with pytest.raises(CAAEvalError, match="per-row multiplier"):
        run(model, enc, Steering(model, {LAYER: vector}, torch.ones(2), positions="all", tokenizer=tok))


@pytest.mark.parametrize("spec", ["after_instruction", "generated", "span:0:4"])
def test_kv_cache_generation_equals_full_recomputation(tiny_model, vector, spec):
    model, tok = tiny_model
    positions = Positions.parse(spec)
    texts = [chat(tok, q) for q in QUESTIONS]
    enc = encode(tok, texts, "left")
    new = 6
    steering = Steering(model, {LAYER: vector}, MULT, positions=positions, tokenizer=tok)
    steering.set_batch()
    with steering:
        store, handle = observe(model, "residual", LAYER)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=new,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                min_new_tokens=new,
            )
        handle.remove()
    seqs = out.sequences
    full_mask = torch.cat([enc["attention_mask"], torch.ones(len(texts), new, dtype=torch.long)], 1)
    prompt_lengths = enc["attention_mask"].sum(1).tolist()
    with torch.no_grad():
        steering.set_batch(prompt_lengths=prompt_lengths)
        with steering:
            full = model(input_ids=seqs, attention_mask=full_mask).logits
    width = enc["input_ids"].shape[1]
    for step, scores in enumerate(out.logits):  # logits of the cached steps == the full steered recomputation
        assert torch.allclose(scores, full[:, width - 1 + step], atol=1e-4), f"step {step}"
    # per-position delta during cached generation, against an unsteered forward over the same tokens
    cached = torch.cat(store, dim=1)  # prefill + one column per decode step
    with torch.no_grad():
        plain_store, handle = observe(model, "residual", LAYER)
        model(input_ids=seqs[:, :-1], attention_mask=full_mask[:, :-1])
        handle.remove()
    delta = cached - plain_store[0]
    for row, q in enumerate(QUESTIONS):
        real = full_mask[row, :-1].bool()
        n_real = int(real.sum())
        want = torch.zeros(seqs.shape[1] - 1, dtype=torch.bool)
        want[real] = expected_mask(tok, q, prompt_lengths[row], n_real, positions)
        assert torch.allclose(delta[row][want], (MULT * vector).expand(int(want.sum()), -1), atol=1e-4)
        assert torch.allclose(delta[row][~want], torch.zeros_like(delta[row][~want]), atol=1e-5)


def test_generation_stops_and_hooks_are_removed_on_error(tiny_model, vector):
    model, tok = tiny_model
    layer = decoder_layers(model)[LAYER]
    before = len(layer._forward_hooks) + len(model._forward_pre_hooks)
    steering = Steering(model, {LAYER: vector}, MULT, tokenizer=tok)
    bad = {"input_ids": torch.tensor([[5, 6, 7, 8]])}  # no chat structure -> error inside the forward
    with pytest.raises(ChatStructureError, match="apply_chat_template"):
        with steering, torch.no_grad():
            model(**bad)
    assert len(layer._forward_hooks) + len(model._forward_pre_hooks) == before


def test_regex_positions_hit_only_matching_tokens(tiny_model, vector):
    model, tok = tiny_model
    text = chat(tok, "The weather is sunny today.")
    enc = encode(tok, [text], "right")
    steering = Steering(model, {LAYER: vector}, MULT, positions="regex:sunny", tokenizer=tok)
    delta = run(model, enc, steering) - run(model, enc, None)
    steered = delta[0].abs().sum(-1) > 0
    tokens = tok.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    hit = "".join(t for t, s in zip(tokens, steered.tolist()) if s).replace("Ġ", " ")
    assert steered.any() and "sunny" in hit.replace(" ", "") and len(hit.strip()) <= len("sunny") + 1


def test_positions_parse_errors():
    assert Positions.parse("span:2:5") == Positions("span", 2, 5)
    assert str(Positions.parse("span:-1:")) == "span:-1:"
    for bad in ("middle", "span:a:b", "span:5:2", "regex:("):
        with pytest.raises(CAAEvalError):
            Positions.parse(bad)


def test_locator_matches_chat_template_definition(smollm2):
    """On the real SmolLM2 template steering starts at the `\n` after `assistant` (the prompt's last token)."""
    _, tok = smollm2
    locator = InstructionLocator(tok)
    for q in QUESTIONS:
        ids = tok(chat(tok, q, prefix="("), add_special_tokens=False)["input_ids"]
        end = locator.instruction_end(ids)
        assert end == instruction_len(tok, q)
        assert tok.decode(ids[end - 2 : end + 1]).endswith("assistant\n")


def test_unknown_site_and_layer_errors(tiny_model, vector):
    model, tok = tiny_model
    with pytest.raises(CAAEvalError, match="site='embeddings' not understood"):
        Steering(model, {LAYER: vector}, 1.0, "embeddings", tokenizer=tok)
    with pytest.raises(CAAEvalError, match="out of range"):
        Steering(model, {99: vector}, 1.0, tokenizer=tok)


_HOST_SYNCS = ("item", "tolist", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__")


def test_decode_steps_make_no_device_to_host_copy(tiny_model, vector, monkeypatch):
    """Per generated token, the hooks only run tensor ops: no .item()/.tolist()/.cpu()/int(tensor)/bool(tensor)
    (each of which is a host sync on a GPU). Token ids are read on the host once per prompt (the plan)."""
    model, tok = tiny_model
    steering = Steering(model, {1: vector, LAYER: vector}, MULT, tokenizer=tok)
    calls: list[tuple[int, str]] = []
    originals = {name: getattr(torch.Tensor, name) for name in _HOST_SYNCS}
    forward = {"n": 0}

    def counting(name):
        def method(self, *args, **kwargs):
            calls.append((forward["n"], name))
            return originals[name](self, *args, **kwargs)

        return method

    def watched(fn):
        def run_watched(*args, **kwargs):
            for name in _HOST_SYNCS:
                monkeypatch.setattr(torch.Tensor, name, counting(name))
            try:
                return fn(*args, **kwargs)
            finally:
                for name in _HOST_SYNCS:
                    monkeypatch.setattr(torch.Tensor, name, originals[name])

        return run_watched

    before = steering._before_forward

    def before_forward(*args, **kwargs):
        forward["n"] += 1
        return watched(before)(*args, **kwargs)

    monkeypatch.setattr(steering, "_before_forward", before_forward)
    make_hook = steering._make_hook
    monkeypatch.setattr(steering, "_make_hook", lambda layer: watched(make_hook(layer)))
    enc = encode(tok, [chat(tok, q) for q in QUESTIONS], "left")
    with steering, torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert forward["n"] == 5  # one prefill + four decode steps
    assert [c for c in calls if c[0] > 1] == [], "host syncs in the per-token path"
    assert any(c[0] == 1 for c in calls), "the check saw nothing: the prefill plan reads ids on the host"
    with Steering(model, {1: vector, LAYER: vector}, MULT, tokenizer=tok), torch.no_grad():
        again = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(out, again)
