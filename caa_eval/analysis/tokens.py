"""Per-token similarity with a steering vector (CAA §8.1): which tokens carry the behaviour.

The text runs through the unsteered model once; at the vector's site and layer each token's activation is
compared with the vector by cosine similarity. Positive = the token's activation points along the
behaviour-increasing direction, negative = against it. With `generate`, the model first answers greedily
(unsteered) and the answer's tokens are included, as in the paper's Figure 6.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from caa_eval.core.layers import decoder_layers, hidden_of, site_module
from caa_eval.core.prompts import prompt_ids
from caa_eval.errors import CAAEvalError

__all__ = ["TokenCosines", "prompt_ids", "generate_answer", "site_activations", "cosine_rows", "token_cosines"]


@dataclass
class TokenCosines:
    """Cosines of each token's activation with one steering vector, in token order.

    Args:
        layer: decoder block the activations were read at.
        site: `residual`, `mlp` or `attn`.
        ids: token ids.
        tokens: each token decoded on its own (what the HTML shows).
        cosines: cosine similarity per token.
        n_prompt: how many of the tokens are the prompt; the rest were generated.
        meta: provenance written into the JSON next to the fixed keys (model, vector, chat template …).
    """

    layer: int
    site: str
    ids: list[int]
    tokens: list[str]
    cosines: list[float]
    n_prompt: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """`{"layer": L, "tokens": [{"id", "token", "cosine"}, …]}` plus `site`, `n_prompt_tokens`, `meta`."""
        return {
            "layer": self.layer,
            "tokens": [
                {"id": int(i), "token": t, "cosine": float(c)} for i, t, c in zip(self.ids, self.tokens, self.cosines)
            ],
            "site": self.site,
            "n_prompt_tokens": self.n_prompt,
            "meta": self.meta,
        }


@torch.no_grad()
def generate_answer(model: Any, tokenizer: Any, ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy, unsteered continuation of `ids` (at most `max_new_tokens` tokens, stops at EOS).

    Args:
        model: an HF causal LM.
        tokenizer: its tokenizer (for the pad / EOS ids).
        ids: the prompt's token ids.
        max_new_tokens: answer length limit.
    """
    if max_new_tokens <= 0:
        raise CAAEvalError(f"--generate {max_new_tokens}: give a positive number of tokens")
    device = next(model.parameters()).device
    inputs = torch.tensor([ids], device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(
        inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
    )
    return [int(t) for t in out[0, len(ids) :].tolist()]


@torch.no_grad()
def site_activations(
    model: nn.Module, ids: list[int], layer: int, site: str = "residual", layers_path: str | None = None
) -> torch.Tensor:
    """The (tokens, hidden) activations at `site` of decoder block `layer` for one unpadded sequence.

    Args:
        model: an HF causal LM.
        ids: token ids.
        layer: block index (0-based; `residual` = the block's output, CAA's `hidden_states[layer + 1]`).
        site: `residual`, `mlp` or `attn`.
        layers_path: dotted path to the block list for models not found structurally.
    """
    blocks = decoder_layers(model, layers_path)
    if not 0 <= layer < len(blocks):
        raise CAAEvalError(f"layer {layer} out of range: the model has layers 0..{len(blocks) - 1}")
    seen: list[torch.Tensor] = []
    handle = site_module(blocks[layer], site).register_forward_hook(
        lambda module, args, output: seen.append(hidden_of(output).detach())
    )
    try:
        device = next(model.parameters()).device
        model(torch.tensor([ids], device=device), use_cache=False)
    finally:
        handle.remove()
    if not seen:
        raise CAAEvalError(f"layer {layer} site {site}: the forward pass never reached the hooked module")
    return seen[0][0]


def cosine_rows(activations: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Cosine of every row of `activations` (T, H) with `vector` (H,), in float64; zero rows give 0."""
    acts = activations.detach().to(torch.float64)
    vec = vector.detach().reshape(-1).to(device=acts.device, dtype=torch.float64)
    if acts.shape[-1] != vec.numel():
        raise CAAEvalError(
            f"vector has size {vec.numel()} but activations have size {acts.shape[-1]}: "
            "the vector was extracted from a different model"
        )
    denom = acts.norm(dim=-1) * vec.norm()
    dots = acts @ vec
    return torch.where(denom > 0, dots / denom.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(dots))


def token_cosines(
    model: nn.Module,
    tokenizer: Any,
    vector: torch.Tensor,
    layer: int,
    text: str,
    generate: int = 0,
    chat_template: bool = True,
    site: str = "residual",
    meta: dict[str, Any] | None = None,
    answer: str | None = None,
) -> TokenCosines:
    """Per-token cosine similarity of `text` (and, with `generate`, the model's answer) with `vector`.

    Args:
        model: an HF causal LM (unsteered while it runs).
        tokenizer: its tokenizer.
        vector: the steering vector for `layer` (1-D, hidden size).
        layer: the block the vector belongs to.
        text: the prompt or question (a user turn unless `chat_template` is False).
        generate: number of answer tokens to generate greedily first (0 = prompt only).
        chat_template: see `prompt_ids`.
        site: where the vector was read (`residual`, `mlp`, `attn`).
        meta: provenance copied into the result.
        answer: a given answer appended after the prompt (e.g. a steered generation from a run), instead of
            generating one.
    """
    ids = prompt_ids(tokenizer, text, chat_template)
    n_prompt = len(ids)
    if generate:
        ids = ids + generate_answer(model, tokenizer, ids, generate)
    elif answer is not None:
        ids = ids + list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    cos = cosine_rows(site_activations(model, ids, layer, site), vector)
    tokens = [tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False) for i in ids]
    info = {"chat_template": bool(chat_template), "generated_tokens": len(ids) - n_prompt, **(meta or {})}
    return TokenCosines(layer, site, ids, tokens, [float(c) for c in cos.tolist()], n_prompt, info)
