"""How big a steering setting is relative to the model (§9.1): residual-stream norms and next-token KL on a small
shipped set of ordinary questions (`neutral_prompts.json`). Used by steered-hf to record every run's scale and
by `caa_eval.analysis.calibrate` to find the multiplier for a target KL.

- norm fraction: |multiplier| × ‖vector‖ / mean ‖residual stream‖ at that layer (block output, every real
  token of the chat-templated prompts except the first, whose norm is an outlier in most models);
- KL: mean over the prompts of KL(steered ‖ unsteered) of the next-token distribution at the end of the
  prompt (where the answer starts), steering at the given site and positions.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import torch
from torch import nn

from caa_eval.core.hooks import Steering
from caa_eval.core.layers import ModelLayout, hidden_of
from caa_eval.core.positions import InstructionLocator, Positions
from caa_eval.core.prompts import prompt_ids
from caa_eval.errors import CAAEvalError

__all__ = ["neutral_prompts", "ScaleProbe", "ScaleRow"]


def neutral_prompts() -> list[str]:
    """The shipped ordinary questions (no link to any CAA behaviour)."""
    text = resources.files("caa_eval.core").joinpath("neutral_prompts.json").read_text(encoding="utf-8")
    return list(json.loads(text)["prompts"])


@dataclass
class ScaleRow:
    """One multiplier's scale. `norm_fraction` = |multiplier| × vector_norm / resid_norm; `kl` in nats."""

    layer: int
    multiplier: float
    site: str
    positions: str
    vector_norm: float
    resid_norm: float
    norm_fraction: float
    kl: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ScaleProbe:
    """Neutral prompts run once through a model: residual norms per layer and unsteered next-token log-probs;
    `kl()` then costs one batched forward per multiplier.

    Args:
        model: an HF causal LM.
        tokenizer: its tokenizer (chat template used for the prompts, as in CAA's evaluation).
        prompts: questions (default: the shipped `neutral_prompts()`).
        layout: the model's `ModelLayout` (default: resolved structurally here).
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, prompts: Sequence[str] | None = None, layout: ModelLayout | None = None
    ):
        self.layout = layout or ModelLayout.of(model)
        self.model, self.tokenizer = model, tokenizer
        self.prompts = list(prompts) if prompts is not None else neutral_prompts()
        if not self.prompts:
            raise CAAEvalError("the scale probe needs at least one neutral prompt")
        rows = [prompt_ids(tokenizer, p) for p in self.prompts]
        device = next(model.parameters()).device
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)  # right padding
        self.attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        self.last = torch.tensor([len(r) - 1 for r in rows], device=device)
        self.rows = rows
        self.blocks = self.layout.blocks
        self._locator: InstructionLocator | None = None
        self._prefix: list[tuple[Any, int, int]] | None = None  # (KV cache of all but the last token, last id, length)
        self._prefix_base: torch.Tensor | None = None
        norms: dict[int, list[torch.Tensor]] = {}
        handles = [block.register_forward_hook(self._norm_hook(i, norms)) for i, block in enumerate(self.blocks)]
        try:
            self.base_logprobs = self._next_token_logprobs()
        finally:
            for h in handles:
                h.remove()
        keep = self.attention_mask.bool().clone()
        keep[:, 0] = False  # the first token's residual norm is an outlier (attention sink) in most models
        self.resid_norms = {i: float(n[0][keep].mean()) for i, n in norms.items()}

    @staticmethod
    def _norm_hook(layer: int, store: dict[int, list[torch.Tensor]]):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            store[layer] = [hidden_of(output).detach().float().norm(dim=-1)]

        return hook

    @torch.no_grad()
    def _next_token_logprobs(self) -> torch.Tensor:
        logits = self.model(input_ids=self.input_ids, attention_mask=self.attention_mask, use_cache=False).logits
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, self.last.to(logits.device)].float().log_softmax(-1)

    def _last_token_only(self, rule: Positions) -> bool:
        """Whether `rule` steers exactly the last prompt token here (CAA's rule on a prompt without answer):
        then the unsteered prefix is computed once and each multiplier costs one token per prompt."""
        if not (rule.mode == "after_instruction" or (rule.mode == "span" and rule.start == 0)):
            return False
        assert self._locator is not None
        return all(len(r) > 1 and self._locator.instruction_end(r) == len(r) - 1 for r in self.rows)

    @torch.no_grad()
    def _cached_logprobs(self, steering: Steering | None) -> torch.Tensor:
        """Next-token log-probs from the prefix caches, the last token steered by `steering` (if any)."""
        device = next(self.model.parameters()).device
        # transformers 5.x names the argument and output `cache` (`past_key_values` is deprecated there), 4.x not
        name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        if self._prefix is None:
            self._prefix = []
            for r in self.rows:
                out = self.model(input_ids=torch.tensor([r[:-1]], device=device), use_cache=True)
                self._prefix.append((out[name], r[-1], len(r) - 1))
        out = []
        for cache, last, n in self._prefix:
            step = {"input_ids": torch.tensor([[last]], device=device), name: cache}
            try:
                if steering is None:
                    logits = self.model(**step).logits
                else:
                    with steering:
                        logits = self.model(**step).logits
            finally:
                cache.crop(-1)  # drop the last token again (a negative crop means this in transformers 4.x and 5.x)
            if cache.get_seq_length() != n:
                raise RuntimeError(f"KV cache holds {cache.get_seq_length()} tokens after crop, expected {n}")
            out.append(logits[0, -1].float())
        return torch.stack(out).log_softmax(-1)

    def kl(
        self,
        vector: torch.Tensor,
        layer: int,
        multiplier: float,
        site: str = "residual",
        positions: str | Positions = "after_instruction",
    ) -> tuple[float, list[float]]:
        """Mean and per-prompt KL(steered ‖ unsteered) of the next-token distribution, in nats.

        Args:
            vector: the steering vector for `layer`.
            layer: block to steer.
            multiplier: coefficient of the vector.
            site: `residual`, `mlp` or `attn`.
            positions: which tokens get the vector (see `caa_eval.core.positions.Positions`).
        """
        return self.kl_of({layer: vector.reshape(-1)}, multiplier, site, positions)

    def kl_of(
        self,
        vectors: dict[int, torch.Tensor],
        multiplier: float,
        site: str = "residual",
        positions: str | Positions = "after_instruction",
    ) -> tuple[float, list[float]]:
        """As `kl`, for a vector per layer (joint-layer and layer-transfer settings steer several blocks).

        Args:
            vectors: layer -> steering vector.
            multiplier: coefficient of the vectors.
            site: `residual`, `mlp` or `attn`.
            positions: which tokens get the vectors.
        """
        rule = Positions.parse(positions)
        if rule.needs_chat_structure and self._locator is None:
            self._locator = InstructionLocator(self.tokenizer)
        vec = {layer: v.reshape(-1) for layer, v in vectors.items()}
        if self._last_token_only(rule):  # the steered token is the only one the cache does not hold
            if self._prefix_base is None:
                self._prefix_base = self._cached_logprobs(None)
            base = self._prefix_base
            steered = self._cached_logprobs(
                Steering(self.model, vec, float(multiplier), site, "all", layout=self.layout)
            )
        else:
            base = self.base_logprobs
            with Steering(
                self.model,
                vec,
                float(multiplier),
                site,
                rule,
                tokenizer=self.tokenizer,
                locator=self._locator,
                layout=self.layout,
            ):
                steered = self._next_token_logprobs()
        per_prompt = (steered.exp() * (steered - base.to(steered.device))).sum(-1).clamp_min(0.0)
        values = [float(x) for x in per_prompt.tolist()]
        return sum(values) / len(values), values

    def setting(
        self,
        vectors: dict[int, torch.Tensor],
        multiplier: float,
        site: str = "residual",
        positions: str | Positions = "after_instruction",
    ) -> dict[str, Any]:
        """The scale of one steering setting, as steered-hf records it in its results (`steering.scale`):
        `norm_fraction` (mean over the steered layers of |multiplier| × ‖vector‖ / mean residual norm there),
        `kl` in nats, and both per layer.

        Args:
            vectors: layer -> steering vector.
            multiplier: coefficient of the vectors.
            site: `residual`, `mlp` or `attn`.
            positions: which tokens get the vectors.
        """
        fractions = {
            layer: abs(float(multiplier)) * float(v.float().norm()) / self.resid_norm(layer)
            for layer, v in sorted(vectors.items())
        }
        kl = self.kl_of(vectors, multiplier, site, positions)[0] if multiplier != 0 and vectors else 0.0
        return {
            "norm_fraction": sum(fractions.values()) / len(fractions) if fractions else 0.0,
            "kl": kl,
            "norm_fraction_per_layer": {str(k): v for k, v in fractions.items()},
            "neutral_prompts": len(self.prompts),
        }

    def resid_norm(self, layer: int) -> float:
        """Mean ‖block output‖ at `layer` over the prompts' tokens (first token excluded)."""
        if layer not in self.resid_norms:
            raise CAAEvalError(f"layer {layer} out of range: the model has layers 0..{len(self.blocks) - 1}")
        return self.resid_norms[layer]

    def row(
        self,
        vector: torch.Tensor,
        layer: int,
        multiplier: float,
        site: str = "residual",
        positions: str | Positions = "after_instruction",
    ) -> ScaleRow:
        """Norm fraction and KL of one multiplier (see `ScaleRow`)."""
        vnorm = float(vector.float().norm())
        resid = self.resid_norm(layer)
        kl, _ = self.kl(vector, layer, multiplier, site, positions)
        return ScaleRow(
            layer,
            float(multiplier),
            site,
            str(Positions.parse(positions)),
            vnorm,
            resid,
            abs(multiplier) * vnorm / resid,
            kl,
        )
