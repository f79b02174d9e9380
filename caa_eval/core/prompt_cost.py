"""What a system prompt costs, measured like a steering vector's scale (`caa_eval.core.scale`): the mean
KL(prompted ‖ plain) of the next-token distribution at the end of the shipped neutral prompts, the plain model
being the one without system prompt and without steering. With steering as well, the KL is the one of the whole
setting (system prompt + vector) against the same plain model, so prompts, vectors and both together share one
cost axis (docs/costs.md).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from caa_eval.core.hooks import Steering
from caa_eval.core.positions import Positions
from caa_eval.core.prompts import prompt_ids
from caa_eval.core.scale import ScaleProbe

__all__ = ["prompted_logprobs", "prompt_kl", "prompt_scale"]


@torch.no_grad()
def prompted_logprobs(
    probe: ScaleProbe,
    system_prompt: str,
    vectors: dict[int, torch.Tensor] | None = None,
    multiplier: float = 0.0,
    site: str = "residual",
    positions: str = "after_instruction",
) -> torch.Tensor:
    """Next-token log-probs at the end of each neutral prompt, rendered with `system_prompt` (and steered).

    Args:
        probe: a ScaleProbe of the model (its prompts, tokenizer and layer path are used).
        system_prompt: the system message ("" = none).
        vectors: layer -> steering vector, or None for no steering.
        multiplier: coefficient of the vectors.
        site: `residual`, `mlp` or `attn`.
        positions: which tokens get the vectors.
    """
    model, tok = probe.model, probe.tokenizer
    rows = [prompt_ids(tok, p, system_prompt=system_prompt) for p in probe.prompts]
    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    steering = None
    if vectors and multiplier != 0:
        vec = {layer: v.reshape(-1) for layer, v in vectors.items()}
        rule = Positions.parse(positions)
        steering = Steering(model, vec, float(multiplier), site, rule, tokenizer=tok, layout=probe.layout)
    if steering is None:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    else:
        with steering:
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    last = torch.tensor([len(r) - 1 for r in rows], device=logits.device)
    return logits[torch.arange(len(rows), device=logits.device), last].float().log_softmax(-1)


def prompt_kl(probe: ScaleProbe, system_prompt: str | None, **steering: Any) -> float:
    """Mean KL(prompted [+ steered] ‖ plain) over the neutral prompts, in nats; 0 for no prompt and no steering.

    Args:
        probe: a ScaleProbe of the model (its unsteered pass is the plain reference).
        system_prompt: the system message (None or "" = none: then this is the vector's own KL).
        **steering: `prompted_logprobs` keywords (vectors, multiplier, site, positions).
    """
    if not system_prompt and not (steering.get("vectors") and steering.get("multiplier")):
        return 0.0
    prompted = prompted_logprobs(probe, system_prompt or "", **steering)
    base = probe.base_logprobs.to(prompted.device)
    per_prompt = (prompted.exp() * (prompted - base)).sum(-1).clamp_min(0.0)
    return float(per_prompt.mean())


def prompt_scale(probe: ScaleProbe, system_prompts: set[str], steering: dict[str, Any], kl: float) -> dict[str, Any]:
    """The system-prompt part of a run's recorded scale (`config.steering.scale` of steered-hf's results):
    `system_prompt_kl` (the prompt alone vs the plain model) and `total_kl` (prompt + steering vs the plain model).

    Args:
        probe: the model's ScaleProbe.
        system_prompts: the system messages the run's requests were rendered with ("" = none).
        steering: `prompted_logprobs` keywords of the run's steering ({} = unsteered).
        kl: the steering's own KL (the total when there is no system prompt).
    """
    prompts = sorted(p for p in system_prompts if p)
    if not prompts:
        return {"system_prompt_kl": 0.0, "total_kl": kl}
    if len(prompts) > 1:
        return {"system_prompt_error": f"{len(prompts)} different system prompts in one run; KL not measured"}
    return {
        "system_prompt_sha256": hashlib.sha256(prompts[0].encode()).hexdigest()[:16],
        "system_prompt_kl": prompt_kl(probe, prompts[0]),
        "total_kl": prompt_kl(probe, prompts[0], **steering) if steering else prompt_kl(probe, prompts[0]),
    }
