"""CAA's extraction as its original code does it, written from the paper's description for tests and benchmarks.

Batch 1, two full forward passes per pair (matching and non-matching answer), every decoder block's output read
at index -2 (the answer letter of `(A)`), vector = mean over pairs of the difference. No caa-eval code is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def caa_loop(
    model: torch.nn.Module,
    blocks: Sequence[torch.nn.Module],
    encode: Callable[[str, str], list[int]],
    pairs: Sequence[dict],
) -> dict[int, torch.Tensor]:
    """`encode(question, answer)` gives the token ids of one full prompt ending in `(X)`."""
    store: dict[int, torch.Tensor] = {}
    handles = [
        block.register_forward_hook(
            lambda m, a, o, i=i: store.__setitem__(i, (o if torch.is_tensor(o) else o[0])[0, -2].double())
        )
        for i, block in enumerate(blocks)
    ]
    sums = {i: torch.zeros(model.config.hidden_size, dtype=torch.float64) for i in range(len(blocks))}
    try:
        for pair in pairs:
            acts = []
            for key in ("answer_matching_behavior", "answer_not_matching_behavior"):
                with torch.no_grad():
                    model(torch.tensor([encode(pair["question"], pair[key])]))
                acts.append(dict(store))
            for i in sums:
                sums[i] += acts[0][i] - acts[1][i]
    finally:
        for h in handles:
            h.remove()
    return {i: s / len(pairs) for i, s in sums.items()}


def chat_encoder(tok) -> Callable[[str, str], list[int]]:
    """The user turn in the tokenizer's chat template, then the answer as the assistant's reply."""

    def encode(question: str, answer: str) -> list[int]:
        text = (
            tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
            + answer
        )
        return tok(text, add_special_tokens=False)["input_ids"]

    return encode
