"""Hook-based CAA: add `multiplier × vector` at chosen layers, at one site, at chosen token positions.

Positions are decided per batch row from *real* token positions (attention mask / cache position, or
row lengths the caller supplies), never from chunk indices, so results do not depend on batching, on
left vs right padding, or on KV-cache generation vs full recomputation; padding is never steered.

Sites (TransformerLens names in brackets):
- residual: decoder block output (`blocks.L.hook_resid_post`) — what CAA reads and steers;
- mlp: MLP output before it joins the residual stream (`blocks.L.hook_mlp_out`);
- attn: attention output before it joins the residual stream (`blocks.L.hook_attn_out`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from caa_eval.errors import CAAEvalError

SITES = ("residual", "mlp", "attn")
HOOK_NAMES = {"residual": "blocks.{L}.hook_resid_post", "mlp": "blocks.{L}.hook_mlp_out", "attn": "blocks.{L}.hook_attn_out"}
POSITION_MODES = ("after_instruction", "all", "generated", "span", "regex")
_SENTINEL = "\ue000caa-eval-sentinel\ue000"


class ChatStructureError(CAAEvalError):
    """The prompt has no chat structure, so 'after the instruction' is undefined."""


# --------------------------------------------------------------------------- model structure


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of any HF causal LM (Llama/Qwen/Mistral/GPT-2/NeoX/…), found structurally."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    for path in ("model.layers", "model.model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
                 "base_model.model.model.layers", "layers"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and (n_layers is None or len(obj) == n_layers):
            return obj
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and n_layers and len(module) == n_layers:
            return module
    raise CAAEvalError(f"cannot find the decoder layers of {type(model).__name__}; caa-eval supports HF causal LMs")


def site_module(layer: nn.Module, site: str) -> nn.Module:
    names = {"residual": (), "mlp": ("mlp", "feed_forward", "ffn"), "attn": ("self_attn", "attn", "attention")}
    if site not in names:
        raise CAAEvalError(f"unknown site {site!r}; use one of {', '.join(SITES)}")
    if site == "residual":
        return layer
    for name in names[site]:
        sub = getattr(layer, name, None)
        if isinstance(sub, nn.Module):
            return sub
    raise CAAEvalError(f"site {site!r}: {type(layer).__name__} has none of the submodules {names[site]}")


def hidden_of(output: Any) -> torch.Tensor:
    """Layer outputs are Tensors in transformers 5.x and tuples before: handle both."""
    return output if torch.is_tensor(output) else output[0]


def with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return hidden if torch.is_tensor(output) else (hidden, *output[1:])


# --------------------------------------------------------------------------- positions


@dataclass(frozen=True)
class Positions:
    """Which token positions get the vector.

    after_instruction: from the first token of the final assistant turn's header on (CAA), incl. generated tokens;
    all: every real token; generated: tokens after the prompt (for scoring: the continuation);
    span: offsets [start, end) relative to the instruction end (end None = open); regex: prompt tokens that
    overlap a match of `pattern` in the prompt text.
    """

    mode: str = "after_instruction"
    start: int = 0
    end: int | None = None
    pattern: str | None = None

    @classmethod
    def parse(cls, spec: str | Positions) -> Positions:
        if isinstance(spec, Positions):
            return spec
        spec = str(spec).strip()
        head, _, rest = spec.partition(":")
        if head in ("after_instruction", "all", "generated") and not rest:
            return cls(head)
        if head == "span":
            parts = rest.split(":")
            try:
                start = int(parts[0]) if parts[0] else 0
                end = int(parts[1]) if len(parts) > 1 and parts[1] else None
            except ValueError:
                raise CAAEvalError(f"positions={spec!r}: span offsets must be integers, e.g. span:0:4 or span:-3:") from None
            if len(parts) > 2 or (end is not None and end <= start):
                raise CAAEvalError(f"positions={spec!r}: use span:START:END with END > START (END may be empty)")
            return cls("span", start, end)
        if head == "regex" and rest:
            try:
                re.compile(rest)
            except re.error as exc:
                raise CAAEvalError(f"positions={spec!r}: invalid regex ({exc})") from None
            return cls("regex", pattern=rest)
        raise CAAEvalError(f"positions={spec!r} not understood; use after_instruction, all, generated, "
                           "span:START:END (offsets from the instruction end) or regex:PATTERN")

    def __str__(self) -> str:
        if self.mode == "span":
            return f"span:{self.start}:{'' if self.end is None else self.end}"
        if self.mode == "regex":
            return f"regex:{self.pattern}"
        return self.mode

    @property
    def needs_chat_structure(self) -> bool:
        return self.mode in ("after_instruction", "span")


class InstructionLocator:
    """Finds where the instruction ends in a token sequence, using the tokenizer's own chat template.

    The template is rendered around a sentinel user message: what `add_generation_prompt` adds is the
    assistant header (ChatML `<|im_start|>assistant\\n`, Llama-3, Gemma…), and the instruction ends where
    the last header starts. Templates without a generation prompt (Llama-2 `[INST] … [/INST]`) end the
    instruction right after the last user-turn terminator.
    """

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise ChatStructureError(
                "the tokenizer has no chat template, so positions=after_instruction is undefined; "
                "use a chat model or positions=all")
        msgs = [{"role": "user", "content": _SENTINEL}]
        with_prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        without = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        header = with_prompt[len(without):] if with_prompt.startswith(without) else ""
        self.tokenizer = tokenizer
        if header.strip():
            self.kind, text = "header", header
        else:
            self.kind, text = "terminator", without.split(_SENTINEL)[-1].strip()
            if not text:
                raise ChatStructureError("the chat template marks no end of the user turn; use positions=all")
        self.marker_text = text
        variants: set[tuple[int, ...]] = set()
        for candidate in (text, " " + text, text.strip()):
            ids = tuple(tokenizer(candidate, add_special_tokens=False)["input_ids"])
            if not ids:
                continue
            variants.add(ids)
            # BPE may merge the marker's edge with its neighbour in context ("\n(" …): also accept the marker
            # without its merge-prone edge token when what remains is still a distinctive sequence.
            trimmed = ids[:-1] if self.kind == "header" else ids[1:]
            if len(trimmed) >= 2 or (trimmed and trimmed[0] in tokenizer.all_special_ids):
                variants.add(trimmed)
        self.variants = sorted(variants, key=len, reverse=True)

    def instruction_end(self, ids: Sequence[int]) -> int:
        """Index of the first token after the instruction; raises if the prompt has no chat structure."""
        ids = list(ids)
        best = -1
        for marker in self.variants:
            m = len(marker)
            for i in range(len(ids) - m, -1, -1):
                if ids[i] == marker[0] and tuple(ids[i : i + m]) == marker:
                    best = max(best, i if self.kind == "header" else i + m)
                    break
        if best < 0:
            raise ChatStructureError(
                f"no chat turn marker {self.marker_text!r} in the prompt, so positions=after_instruction is "
                "undefined; run lm_eval with --apply_chat_template, or use positions=all")
        return best


def regex_token_positions(tokenizer: Any, ids: Sequence[int], pattern: str) -> list[int]:
    """Token indices whose decoded text overlaps a regex match over the decoded prompt."""
    ids = list(ids)
    ends, text = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=False)
        ends.append(len(text))
    starts = [0, *ends[:-1]]
    spans = [m.span() for m in re.finditer(pattern, text) if m.end() > m.start()]
    return [i for i, (s, e) in enumerate(zip(starts, ends)) if e > s and any(a < e and s < b for a, b in spans)]


@dataclass
class _RowPlan:
    start: int
    end: int | None
    allowed: torch.Tensor | None = None  # bool per absolute position (regex)


# --------------------------------------------------------------------------- the steering context


def _cache_length(kwargs: dict) -> int:
    """Tokens already in the KV cache (transformers names the cache `past_key_values` or `cache`)."""
    position = kwargs.get("cache_position")
    if position is not None:
        return int(position.reshape(-1)[0])
    for name in ("past_key_values", "cache"):
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    return 0


class Steering:
    """Context manager adding `multiplier × vectors[layer]` at `site` of each layer, at `positions`.

    `multiplier` is a float or a 1-D tensor with one coefficient per batch row (sweeps in one batch).
    Before a forward without an attention mask (lm-eval pads loglikelihood batches on the right without
    one) call `set_batch(row_lengths=…)`; for mode `generated` outside `generate()` pass `prompt_lengths`.
    Hooks are removed on exit, also when the forward raises.
    """

    def __init__(self, model: nn.Module, vectors: dict[int, torch.Tensor], multiplier: float | torch.Tensor = 1.0,
                 site: str = "residual", positions: str | Positions = "after_instruction", tokenizer: Any = None,
                 locator: InstructionLocator | None = None):
        if site not in SITES:
            raise CAAEvalError(f"unknown site {site!r}; use one of {', '.join(SITES)}")
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
        layers = decoder_layers(model)
        for layer in vectors:
            if not 0 <= layer < len(layers):
                raise CAAEvalError(f"layer {layer} out of range: the model has layers 0..{len(layers) - 1}")
        self.vectors = {layer: v.detach().reshape(-1) for layer, v in vectors.items()}
        self.modules = {layer: site_module(layers[layer], site) for layer in self.vectors}
        self.multiplier = multiplier
        self._handles: list[Any] = []
        self._cast: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
        self._row_lengths: list[int] | None = None
        self._prompt_lengths: list[int] | None = None
        self._plans: list[_RowPlan] | None = None
        self._scale: torch.Tensor | None = None  # (B, T, 1) for the forward in flight

    # -- configuration
    def set_batch(self, row_lengths: Sequence[int] | None = None, prompt_lengths: Sequence[int] | None = None) -> None:
        self._row_lengths = list(row_lengths) if row_lengths is not None else None
        self._prompt_lengths = list(prompt_lengths) if prompt_lengths is not None else None
        self._plans = None

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
        self._plans = None
        self._scale = None

    # -- per-forward bookkeeping
    def _coefficients(self, batch: int) -> torch.Tensor:
        m = self.multiplier
        if torch.is_tensor(m):
            m = m.detach().to(torch.float32).reshape(-1)
            if m.numel() == 1:
                return m.expand(batch)
            if m.numel() != batch:
                raise CAAEvalError(f"per-row multiplier has {m.numel()} entries but the batch has {batch} rows")
            return m
        return torch.full((batch,), float(m))

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise CAAEvalError("steering needs input_ids (inputs_embeds-only calls are not supported)")
        batch, width = input_ids.shape
        attention = kwargs.get("attention_mask")
        if attention is not None and attention.dim() == 2:
            # the 2-D mask always spans cached + current tokens: the current chunk is its last `width` columns
            attention = attention.detach().to("cpu")
            offset = attention.shape[1] - width
            columns = torch.arange(offset, offset + width)
            real = (attention.long().cumsum(1) - 1)[:, columns]
            valid = attention[:, columns].bool()
        else:
            offset = _cache_length(kwargs)
            columns = torch.arange(offset, offset + width)
            lengths = torch.tensor(self._row_lengths if self._row_lengths is not None else [offset + width] * batch)
            if lengths.numel() != batch:
                raise CAAEvalError(f"set_batch gave {lengths.numel()} row lengths for a batch of {batch}")
            real = columns.expand(batch, width)
            valid = real < lengths[:, None]
        if offset == 0 or self._plans is None:
            ids = input_ids.detach().to("cpu")
            self._plans = [self._plan_row(ids[b][valid[b]].tolist(), b) for b in range(batch)]
        mask = torch.zeros(batch, width, dtype=torch.bool)
        for b, plan in enumerate(self._plans):
            row = valid[b] & (real[b] >= plan.start)
            if plan.end is not None:
                row &= real[b] < plan.end
            if plan.allowed is not None:
                inside = real[b] < plan.allowed.numel()
                row &= inside & plan.allowed[real[b].clamp(max=max(plan.allowed.numel() - 1, 0))]
            mask[b] = row
        self._scale = (mask.to(torch.float32) * self._coefficients(batch)[:, None]).unsqueeze(-1)

    def _plan_row(self, ids: list[int], row: int) -> _RowPlan:
        mode = self.positions.mode
        if mode == "all":
            return _RowPlan(0, None)
        if mode == "generated":
            start = self._prompt_lengths[row] if self._prompt_lengths is not None else len(ids)
            return _RowPlan(start, None)
        if mode == "regex":
            allowed = torch.zeros(len(ids), dtype=torch.bool)
            allowed[regex_token_positions(self.tokenizer, ids, self.positions.pattern or "")] = True
            return _RowPlan(0, len(ids), allowed)
        assert self.locator is not None
        end = self.locator.instruction_end(ids)
        if mode == "after_instruction":
            return _RowPlan(end, None)
        start = max(end + self.positions.start, 0)
        return _RowPlan(start, None if self.positions.end is None else end + self.positions.end)

    def _vector(self, layer: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
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
                raise CAAEvalError(f"steering mask {tuple(scale.shape[:2])} does not fit activations {tuple(hidden.shape[:2])}")
            return with_hidden(output, hidden + scale * self._vector(layer, hidden.device, hidden.dtype))

        return hook
