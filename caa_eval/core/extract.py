"""CAA vector extraction: mean over pairs of (activation at the matching answer letter − at the other letter).

The two prompts of a pair differ only in the answer letter, so the chat-templated prefix is run once
(batched, KV-cached) and the two letters are then run as one extra token each: half the compute of the
naive two-forwards-per-pair loop, all layers in the same pass, no LM head, stopping after the last
requested layer. Pairs whose letter merges with its neighbour in the tokenizer fall back to full rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict, Unpack

import torch
from tqdm.auto import tqdm

from caa_eval import data
from caa_eval.core.diagnostics import DIAGNOSTICS_KEY, layer_diagnostics
from caa_eval.core.forward import cache_kwarg, decoder_base, pad_right
from caa_eval.core.layers import ModelLayout, hidden_of
from caa_eval.core.read_rows import READ_RULES, ReadRow, build_rows, check_read
from caa_eval.core.vectors import SteeringVector, model_fingerprint
from caa_eval.errors import CAAEvalError
from caa_eval.files import check_output
from caa_eval.vocab import BEHAVIOURS, behaviour_key, parse_layers, parse_site

__all__ = [
    "ExtractOptions",
    "extract_vectors",
    "extract_with_diagnostics",
    "extract_to_file",
    "check_context",
    "context_length",
    "default_behaviour",
]

log = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised after the last requested layer: later layers cannot change what was read."""


def context_length(model: torch.nn.Module) -> int | None:
    """The longest input the model was built for (`max_position_embeddings` or the like), None if unknown."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(model: torch.nn.Module, rows: Sequence[tuple[ReadRow, ReadRow]]) -> None:
    """Refuse prompts longer than the model's context before the first forward, not after a long run.

    Why: past its trained positions a model reads garbage (or fails deep inside attention), and a long
    extraction would only then find out.

    Args:
        model: the model vectors are read from.
        rows: both prompts of every pair, tokenised (`build_rows`).
    """
    limit = context_length(model)
    if limit is None:
        return
    too_long = [
        (i, max(len(pos.ids), len(neg.ids)))
        for i, (pos, neg) in enumerate(rows)
        if max(len(pos.ids), len(neg.ids)) > limit
    ]
    if too_long:
        i, n = max(too_long, key=lambda x: x[1])
        raise CAAEvalError(
            f"{len(too_long)} pair(s) are longer than the model's context of {limit} tokens "
            f"(longest: item {i}, {n} tokens); shorten or drop them"
        )


def _shares_prefix(pos: ReadRow, neg: ReadRow) -> bool:
    return pos.span is None and pos.read == neg.read and pos.ids[:-1] == neg.ids[:-1]


class _Reader:
    """Forward hooks that record the site output of each requested layer, and stop after the last one."""

    def __init__(self, layout: ModelLayout, layers: Sequence[int], site: str):
        self.layers = list(layers)
        self.outputs: dict[int, torch.Tensor] = {}
        self.active = False
        self.handles = [layout.site(layer, site).register_forward_hook(self._record(layer)) for layer in layers]
        self.handles.append(layout.blocks[max(layers)].register_forward_hook(self._stop))

    def _record(self, layer: int):
        def hook(module, args, output):
            if self.active:
                self.outputs[layer] = hidden_of(output)

        return hook

    def _stop(self, module, args, output):
        raise _Stop

    def run(self, fn) -> dict[int, torch.Tensor]:
        self.outputs, self.active = {}, True
        try:
            fn()
        except _Stop:
            pass
        finally:
            self.active = False
        return self.outputs

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def _shared_prefix_batch(
    base, reader: _Reader, batch: list[tuple[ReadRow, ReadRow]], pad_id: int, device
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Prefix once with a KV cache, then both letters as one step: returns (pos, neg) per layer, each (B, H)."""
    from transformers import DynamicCache

    prefixes = [pos.ids[:-1] for pos, _ in batch]
    ids, mask = pad_right(prefixes, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    cache_kw = cache_kwarg(base)
    reader.active = False
    try:
        base(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kw: cache})
    except _Stop:
        pass
    cache.batch_repeat_interleave(2)
    letters = torch.tensor([[row.ids[-1]] for pair in batch for row in pair], device=device)
    mask2 = torch.cat([mask.repeat_interleave(2, 0), torch.ones(len(letters), 1, dtype=mask.dtype, device=device)], 1)
    lengths = mask.sum(-1).repeat_interleave(2)[:, None]
    outputs = reader.run(
        lambda: base(input_ids=letters, attention_mask=mask2, position_ids=lengths, use_cache=True, **{cache_kw: cache})
    )
    return {layer: (out[0::2, -1].float(), out[1::2, -1].float()) for layer, out in outputs.items()}


@torch.no_grad()
def _full_rows_batch(
    base, reader: _Reader, batch: list[tuple[ReadRow, ReadRow]], pad_id: int, device
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    rows = [row for pair in batch for row in pair]
    ids, mask = pad_right([r.ids for r in rows], pad_id, device)
    outputs = reader.run(lambda: base(input_ids=ids, attention_mask=mask, use_cache=False))
    read = torch.tensor([r.read for r in rows], device=device)
    diffs = {}
    for layer, out in outputs.items():
        spans = [r.span for r in rows]
        if all(s is not None for s in spans):
            picked = torch.stack([out[i, s[0] : s[1]].mean(0) for i, s in enumerate(spans) if s is not None])
        else:
            picked = out[torch.arange(len(rows), device=device), read]
        diffs[layer] = (picked[0::2].float(), picked[1::2].float())
    return diffs


class ExtractOptions(TypedDict, total=False):
    """How vectors are read (defaults as in `_activations`): every extraction entry point takes these."""

    layers: Sequence[int] | None  # layers to read (default: all)
    site: str  # `residual`, `mlp` or `attn`
    batch_size: int  # pairs per forward pass
    system_prompt: str | None  # system message of the A/B prompts (None: none)
    progress: bool  # show a progress bar
    read: str  # `letter` (CAA) or `answer_mean` (full-text answers; the demo's variant)
    layout: ModelLayout | None  # the model's `ModelLayout` (default: resolved structurally)


def extract_vectors(
    model: torch.nn.Module, tokenizer: Any, pairs: Sequence[data.ContrastPair], **options: Unpack[ExtractOptions]
) -> dict[int, torch.Tensor]:
    """Mean over pairs of (matching − non-matching) activation at the answer letter, per layer.

    read="answer_mean" averages over the answer's tokens instead, for pairs whose answers are full texts:
    a documented variant for models too small to answer A/B questions (the demo), not CAA's protocol.

    Args:
        model: the HF causal LM.
        tokenizer: its tokenizer (with its chat template).
        pairs: the contrast pairs.
        **options: `ExtractOptions`.
    """
    return extract_with_diagnostics(model, tokenizer, pairs, **options)[0]


def extract_with_diagnostics(
    model: torch.nn.Module, tokenizer: Any, pairs: Sequence[data.ContrastPair], **options: Unpack[ExtractOptions]
) -> tuple[dict[int, torch.Tensor], dict[str, dict[str, float]]]:
    """extract_vectors' vectors and, per layer, the pairs' consistency and AUROC (core.diagnostics); holds every
    pair's two activations per layer on the CPU until the end (2 × pairs × layers × hidden × 4 bytes).

    Args:
        model: the HF causal LM.
        tokenizer: its tokenizer.
        pairs: the contrast pairs.
        **options: `ExtractOptions`.
    """
    acts = _activations(model, tokenizer, pairs, **options)
    vectors = {layer: ((pos - neg).double().sum(0) / len(pos)).to(torch.float32) for layer, (pos, neg) in acts.items()}
    return vectors, {str(layer): layer_diagnostics(pos, neg) for layer, (pos, neg) in acts.items()}


def _activations(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[data.ContrastPair],
    layers: Sequence[int] | None = None,
    site: str = "residual",
    batch_size: int = 16,
    system_prompt: str | None = None,
    progress: bool = True,
    read: str = "letter",
    layout: ModelLayout | None = None,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, every pair's (matching, non-matching) activation, each (pairs, hidden) float32 on the CPU."""
    layout = layout or ModelLayout.of(model)
    chosen = parse_layers(layers, layout.n_layers)
    _check_batch_size(batch_size)
    rows = build_rows(tokenizer, pairs, system_prompt, read)
    check_context(model, rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    base = decoder_base(model)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0].ids))  # similar lengths share a batch
    parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {layer: [] for layer in chosen}
    reader = _Reader(layout, chosen, site)
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=len(rows), desc="extracting CAA vectors", unit="pair", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                batch = [rows[i] for i in order[start : start + batch_size]]
                fast = [p for p in batch if _shares_prefix(*p)]
                slow = [p for p in batch if not _shares_prefix(*p)]
                for part, fn in ((fast, _shared_prefix_batch), (slow, _full_rows_batch)):
                    if part:
                        for layer, (pos, neg) in fn(base, reader, part, pad_id, device).items():
                            parts[layer].append((pos.cpu(), neg.cpu()))
                bar.update(len(batch))
    finally:
        reader.close()
        model.train(was_training)
    return {layer: (torch.cat([p for p, _ in got]), torch.cat([n for _, n in got])) for layer, got in parts.items()}


def default_behaviour(data_path: Path) -> str:
    """The behaviour a pair file stands for when none is given: CAA's folder name, else the file's stem.

    Why strict: the name must match the task names later (`caa_ab_<behaviour>`), or `stats` finds no
    baseline; a generically named file in an arbitrary folder says nothing, so it needs a label.

    Args:
        data_path: the contrast-pair file.
    """
    if data_path.stem.startswith(("generate_dataset", "test_dataset")):
        folder = behaviour_key(data_path.parent.name)
        if folder in BEHAVIOURS:
            return folder
        raise CAAEvalError(
            f"{data_path}: cannot tell the behaviour from the name {data_path.name} in folder "
            f"{data_path.parent.name!r} (not one of CAA's behaviours); pass --behaviour-label NAME"
        )
    return behaviour_key(data_path.stem)


def _check_settings(layers: Any, site: str, read: str, batch_size: int) -> None:
    parse_layers(layers)
    parse_site(site)
    check_read(read)
    _check_batch_size(batch_size)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise CAAEvalError(f"--batch-size {batch_size}: write 1 or more")


def extract_to_file(
    model_name: str,
    data_path: str | Path,
    out: str | Path,
    layers=None,
    site: str = "residual",
    batch_size: int = 16,
    behaviour: str | None = None,
    system_prompt: str | None = None,
    model=None,
    tokenizer=None,
    progress: bool = True,
    read: str = "letter",
    device: str | None = None,
    dtype: str = "float32",
    layers_path: str | None = None,
    layout: ModelLayout | None = None,
) -> SteeringVector:
    """Extract from a contrast-pair file and save a self-describing `.safetensors` vector file.

    Args:
        model_name: HF path/ID or `smollm2-135m-instruct` (loaded unless `model`/`tokenizer` are given).
        data_path, out: the JSON/JSONL contrast pairs; the output `.safetensors` path.
        layers: layer spec (`all`, 13, `10-14`, a list).
        site, batch_size: `residual`, `mlp` or `attn`; pairs per forward pass.
        behaviour: name recorded in the file (default: CAA's folder name, else the file's stem).
        system_prompt, read: a system message in every prompt; `letter` (CAA) or `answer_mean` (free-text answers).
        device: where a model loaded here runs (`cuda`, `cuda:N`, `mps`, `cpu`; None/`auto`: cuda if available).
        dtype: the weights' dtype of a model loaded here (`float32`, `bfloat16`, `float16`).
        layers_path, layout: where the decoder blocks are, for models not found structurally (a dotted path, or
            the given model's `ModelLayout`).
    """
    data_path = Path(data_path)
    # everything that can be checked without the model is checked before loading it
    check_output(out, "out")
    _check_settings(layers, site, read, batch_size)
    pairs = data.load_contrast_pairs(data_path, free_text_answers=read == "answer_mean")
    name = behaviour_key(behaviour) if behaviour else default_behaviour(data_path)
    if model is None:
        model, tokenizer = _load(model_name, device, dtype)
    options = ExtractOptions(layers=layers, site=site, batch_size=batch_size, system_prompt=system_prompt, read=read)
    options.update({"progress": progress, "layout": layout or ModelLayout.of(model, layers_path)})
    vectors, diagnostics = extract_with_diagnostics(model, tokenizer, pairs, **options)
    sv = SteeringVector(
        vectors=vectors,
        behaviour=name,
        model=model_name,
        model_fingerprint=model_fingerprint(model),
        site=site,
        read_position=READ_RULES[read],
        n_pairs=len(pairs),
        dataset_sha256=data.file_sha256(data_path),
        extra={"system_prompt": system_prompt, "data_file": data_path.name, DIAGNOSTICS_KEY: diagnostics},
    )
    sv.save(out)
    if not behaviour and not data_path.stem.startswith(("generate_dataset", "test_dataset")):
        # said once the file exists: a bad input must stay one stderr line, with no note before it
        log.info("behaviour recorded as %r (from the file name %s); pass --behaviour-label NAME", name, data_path.name)
    return sv


def _load(model_name: str, device: str | None, dtype: str) -> tuple[Any, Any]:
    from caa_eval.models import load_model, resolve_device

    where = resolve_device(device)  # a missing GPU is one line before the load, not a slow CPU run
    model, tokenizer = load_model(model_name, dtype=dtype)
    return model.to(where), tokenizer
