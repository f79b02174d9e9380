"""Hook-based CAA: add `multiplier × vector` at chosen layers, at one site, at chosen token positions.

Positions are decided per batch row from *real* token positions (attention mask / cache position, or
row lengths the caller supplies), never from chunk indices, so results do not depend on batching, on
left vs right padding, or on KV-cache generation vs full recomputation; padding is never steered.
The per-token path is tensor ops on the activations' device (no host sync per generated token); token ids
are read on the host once per prompt, to find where the instruction ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from caa_eval.core.layers import ModelLayout, hidden_of, with_hidden
from caa_eval.core.positions import InstructionLocator, Positions, regex_token_positions
from caa_eval.errors import CAAEvalError
from caa_eval.vocab import parse_site

__all__ = ["Steering", "steer"]

_OPEN = torch.iinfo(torch.long).max


def _cache_length(kwargs: dict) -> int:
    """Tokens already in the KV cache, from the cache object's own (host-side) bookkeeping."""
    for name in ("past_key_values", "cache"):
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    position = kwargs.get("cache_position")
    if position is not None:
        return int(position.reshape(-1)[0])  # only without a cache object (one sync per forward, not per layer)
    return 0


class Steering:
    """Context manager adding `multiplier × vectors[layer]` at `site` of each layer, at `positions`.

    Args:
        model: an HF causal LM.
        vectors: layer index -> 1-D vector of the model's hidden size.
        multiplier: a float, or a 1-D tensor with one coefficient per batch row (several settings in one batch).
        site: `residual`, `mlp` or `attn`.
        positions: a `Positions` rule or its spelling (`after_instruction`, `all`, `generated`, `span:S:E`,
            `regex:P`).
        tokenizer: needed by `after_instruction`, `span` and `regex`.
        locator: a prepared `InstructionLocator` (saves rendering the template again).
        layout: the model's `ModelLayout` (default: resolved here; models that need `layers_path` pass theirs).

    Before a forward without an attention mask (lm-eval pads loglikelihood batches on the right without
    one) call `set_batch(row_lengths=…)`; for mode `generated` outside `generate()` pass `prompt_lengths`.
    Hooks are removed on exit, also when the forward raises.
    """

    def __init__(
        self,
        model: nn.Module,
        vectors: dict[int, torch.Tensor],
        multiplier: float | torch.Tensor = 1.0,
        site: str = "residual",
        positions: str | Positions = "after_instruction",
        tokenizer: Any = None,
        locator: InstructionLocator | None = None,
        layout: ModelLayout | None = None,
    ):
        parse_site(site)
        self.model = model
        self.site = site
        self.positions = Positions.parse(positions)
        self.tokenizer = tokenizer
        if self.positions.needs_chat_structure and locator is None:
            if tokenizer is None:
                raise CAAEvalError(f"positions={self.positions} needs the tokenizer to find the instruction end")
            locator = InstructionLocator(tokenizer)
        if self.positions.mode == "regex" and tokenizer is None:
            raise CAAEvalError("positions=regex needs the tokenizer")
        self.locator = locator
        layout = layout or ModelLayout.of(model)
        for layer in vectors:
            if not 0 <= layer < layout.n_layers:
                raise CAAEvalError(f"layer {layer} out of range: the model has layers 0..{layout.n_layers - 1}")
        self.vectors = {layer: v.detach().reshape(-1) for layer, v in vectors.items()}
        self.modules = {layer: layout.site(layer, site) for layer in self.vectors}
        self.multiplier = multiplier
        self._handles: list[Any] = []
        self._cast: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
        self._row_lengths: list[int] | None = None
        self._prompt_lengths: list[int] | None = None
        self._plan: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None  # start, end, allowed
        self._scale: torch.Tensor | None = None  # (B, T, 1) for the forward in flight

    # -- configuration
    def set_batch(self, row_lengths: Sequence[int] | None = None, prompt_lengths: Sequence[int] | None = None) -> None:
        self._row_lengths = list(row_lengths) if row_lengths is not None else None
        self._prompt_lengths = list(prompt_lengths) if prompt_lengths is not None else None
        self._plan = None

    def __enter__(self) -> Steering:
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._before_forward, with_kwargs=True))
            for layer, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._make_hook(layer)))
        except Exception:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._plan = None
        self._scale = None

    # -- per-forward bookkeeping
    def _coefficients(self, batch: int, device: torch.device) -> torch.Tensor:
        m = self.multiplier
        if torch.is_tensor(m):
            m = m.detach().to(device=device, dtype=torch.float32).reshape(-1)
            if m.numel() == 1:
                return m.expand(batch)
            if m.numel() != batch:
                raise CAAEvalError(f"per-row multiplier has {m.numel()} entries but the batch has {batch} rows")
            return m
        return torch.full((batch,), float(m), device=device)

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise CAAEvalError("steering needs input_ids (inputs_embeds-only calls are not supported)")
        batch, width = input_ids.shape
        device = input_ids.device
        attention = kwargs.get("attention_mask")
        if attention is not None and attention.dim() == 2:
            # the 2-D mask spans cached + current tokens: the current chunk is its last `width` columns
            offset = attention.shape[1] - width
            real = (attention.long().cumsum(1) - 1)[:, offset:].to(device)
            valid = attention[:, offset:].bool().to(device)
        else:
            offset = _cache_length(kwargs)
            real = torch.arange(offset, offset + width, device=device).expand(batch, width)
            if self._row_lengths is not None:
                if len(self._row_lengths) != batch:
                    raise CAAEvalError(f"set_batch gave {len(self._row_lengths)} row lengths for a batch of {batch}")
                valid = real < torch.tensor(self._row_lengths, device=device)[:, None]
            else:
                valid = torch.ones(batch, width, dtype=torch.bool, device=device)
        if offset == 0 or self._plan is None:
            self._plan = self._make_plan(input_ids, valid)
        start, end, allowed = self._plan
        mask = valid & (real >= start[:, None]) & (real < end[:, None])
        if allowed is not None:
            inside = real < allowed.shape[1]
            mask &= inside & allowed.gather(1, real.clamp(0, allowed.shape[1] - 1))
        self._scale = (mask.to(torch.float32) * self._coefficients(batch, device)[:, None]).unsqueeze(-1)

    def _make_plan(self, input_ids: torch.Tensor, valid: torch.Tensor):
        """Per row: first and last+1 steered real position (once per prompt, on the host)."""
        batch = input_ids.shape[0]
        rows = [row[ok].tolist() for row, ok in zip(input_ids.detach().cpu(), valid.cpu())]
        starts, ends, allowed = [], [], None
        mode = self.positions.mode
        for b, ids in enumerate(rows):
            if mode == "all" or mode == "regex":
                start, end = 0, _OPEN
            elif mode == "generated":
                start, end = (self._prompt_lengths[b] if self._prompt_lengths is not None else len(ids)), _OPEN
            else:
                assert self.locator is not None
                first = self.locator.instruction_end(ids)
                if mode == "after_instruction":
                    start, end = first, _OPEN
                else:
                    start = max(first + self.positions.start, 0)
                    end = _OPEN if self.positions.end is None else first + self.positions.end
            starts.append(start)
            ends.append(end)
        if mode == "regex":
            width = max((len(r) for r in rows), default=1) or 1
            allowed = torch.zeros(batch, width, dtype=torch.bool)
            for b, ids in enumerate(rows):
                allowed[b, regex_token_positions(self.tokenizer, ids, self.positions.pattern or "")] = True
            allowed = allowed.to(input_ids.device)
        device = input_ids.device
        return torch.tensor(starts, device=device), torch.tensor(ends, device=device), allowed

    def _vector(self, layer: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The vector on the hooked module's device and dtype (sharded / mixed-precision models)."""
        key = (layer, device, dtype)
        if key not in self._cast:
            self._cast[key] = self.vectors[layer].to(device=device, dtype=dtype)
        return self._cast[key]

    def _make_hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            if self._scale is None:
                return output
            hidden = hidden_of(output)
            scale = self._scale.to(device=hidden.device, dtype=hidden.dtype)
            if scale.shape[:2] != hidden.shape[:2]:
                raise CAAEvalError(
                    f"steering mask {tuple(scale.shape[:2])} does not fit activations {tuple(hidden.shape[:2])}"
                )
            return with_hidden(output, hidden + scale * self._vector(layer, hidden.device, hidden.dtype))

        return hook


def steer(model: nn.Module, vectors: dict[int, torch.Tensor], multiplier: float = 1.0, **kwargs: Any) -> Steering:
    """`with steer(model, {13: v}, -1.5, tokenizer=tok): model.generate(...)` — see `Steering` for the arguments."""
    return Steering(model, vectors, multiplier, **kwargs)
