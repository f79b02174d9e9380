"""Where CAA acts inside a model: its decoder blocks and, in each, the module whose output is a site.

Blocks are found structurally for HF causal LMs (Llama, Mistral, Qwen, GPT-2, NeoX, …, also under a peft
wrapper); for anything else the user names the block list with a dotted path (`layers_path`). A model's
`ModelLayout` is resolved once and handed to every step that hooks into it (steering, extraction, the one-pass
grid, the scale probe), so a `layers_path` given once holds everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from caa_eval.errors import CAAEvalError
from caa_eval.vocab import parse_site

__all__ = ["ModelLayout", "decoder_layers", "site_module", "hidden_of", "with_hidden", "hidden_size"]

_KNOWN_PATHS = (
    "model.layers",
    "model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "base_model.model.model.layers",
    "model.language_model.layers",
    "layers",
)
_SUBMODULES = {"mlp": ("mlp", "feed_forward", "ffn"), "attn": ("self_attn", "attn", "attention")}


def _n_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)


def _follow(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model: nn.Module, layers_path: str | None = None) -> nn.ModuleList:
    """The decoder blocks of `model`.

    Args:
        model: an HF causal LM (or any module holding its blocks in an `nn.ModuleList`).
        layers_path: dotted attribute path to the block list (e.g. `"backbone.blocks"`) for models whose
            blocks are not found structurally; also settable as `model.caa_layers_path`.
    """
    layers_path = layers_path or getattr(model, "caa_layers_path", None)
    if layers_path:
        obj = _follow(model, layers_path)
        if not isinstance(obj, nn.ModuleList):
            raise CAAEvalError(f"layers_path={layers_path!r} does not name an nn.ModuleList in {type(model).__name__}")
        return obj
    n_layers = _n_layers(model)
    for path in _KNOWN_PATHS:
        obj = _follow(model, path)
        if isinstance(obj, nn.ModuleList) and (n_layers is None or len(obj) == n_layers):
            return obj
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and n_layers and len(module) == n_layers:
            return module
    raise CAAEvalError(
        f"cannot find the decoder layers of {type(model).__name__}; "
        "name them with layers_path=<dotted path to the block list>"
    )


def site_module(block: nn.Module, site: str) -> nn.Module:
    """The module whose forward output is `site` in one decoder block (the block itself for `residual`)."""
    parse_site(site)
    if site == "residual":
        return block
    for name in _SUBMODULES[site]:
        sub = getattr(block, name, None)
        if isinstance(sub, nn.Module):
            return sub
    raise CAAEvalError(f"site {site!r}: {type(block).__name__} has none of the submodules {_SUBMODULES[site]}")


def hidden_of(output: Any) -> torch.Tensor:
    """Layer outputs are Tensors in transformers 5.x and tuples before: handle both."""
    return output if torch.is_tensor(output) else output[0]


def with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return hidden if torch.is_tensor(output) else (hidden, *output[1:])


def hidden_size(model: nn.Module) -> int:
    config: Any = model.config  # an HF PretrainedConfig (nn.Module's attribute typing cannot say so)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(config, "hidden_size", None) or config.n_embd)


@dataclass(frozen=True, eq=False)
class ModelLayout:
    """Where CAA acts in one loaded model: its decoder blocks (found once) and their width.

    Make it once per model with `ModelLayout.of(model, layers_path)` and pass it on; a step given a model
    without a layout resolves the blocks structurally, which fails for models that need `layers_path`.
    """

    blocks: nn.ModuleList
    layers_path: str | None
    hidden_size: int | None  # None for a bare module without an HF config

    @classmethod
    def of(cls, model: nn.Module, layers_path: str | None = None) -> ModelLayout:
        """Args:
        model: an HF causal LM (or any module holding its blocks in an `nn.ModuleList`).
        layers_path: dotted path to the block list for models whose blocks are not found structurally.
        """
        path = layers_path or getattr(model, "caa_layers_path", None)
        width = hidden_size(model) if getattr(model, "config", None) is not None else None
        return cls(decoder_layers(model, path), path, width)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def site(self, layer: int, site: str) -> nn.Module:
        """The module whose output is `site` in block `layer`."""
        return site_module(self.blocks[layer], site)
