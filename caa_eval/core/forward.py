"""Forward-pass plumbing shared by extraction and the one-pass steering grid.

Right-padded batches with explicit positions and masks, a KV-cached prefix continued by a short tail, and
the decoder without its LM head (the vocab-sized matmul extraction never needs).
"""

from __future__ import annotations

import inspect

import torch

__all__ = ["decoder_base", "cache_kwarg", "pad_right"]


def decoder_base(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder without the LM head (`model.model` for Llama-style models), else the model itself."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    return base if isinstance(base, torch.nn.Module) else model


def cache_kwarg(module: torch.nn.Module) -> str:
    """transformers 5.x renamed `past_key_values` to `cache` in some forwards: ask the signature."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def pad_right(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), right-padded to the longest row."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)
