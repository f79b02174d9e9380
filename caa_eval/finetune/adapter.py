"""What a finetune directory is: a peft adapter plus `caa_finetune.json`, and the base model it belongs to.

A LoRA adapter leaves the base weights untouched, so a steering vector extracted from the base model is
meant for the adapted model too. `base_fingerprint` identifies the base weights inside a peft model (the
adapter's own parameters removed, peft's wrapper names undone), which equals `model_fingerprint` of the
plain base model: `steered-hf` with `peft=DIR` accepts the base model's vectors without an override.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from caa_eval.core.vectors import model_fingerprint
from caa_eval.errors import CAAEvalError
from caa_eval.files import write_atomic

__all__ = [
    "FORMAT",
    "INFO_FILE",
    "is_peft_model",
    "base_fingerprint",
    "write_info",
    "read_info",
    "is_complete",
    "adapter_summary",
]

log = logging.getLogger(__name__)

FORMAT = "caa-eval/finetune-v1"
INFO_FILE = "caa_finetune.json"
_ADAPTER_FILES = ("adapter_config.json",)
_WRAPPER_PARTS = ("base_layer", "original_module")  # peft's names for the wrapped base module


def is_peft_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


class _BaseWeights:
    """A peft model's base weights as `model_fingerprint` reads them: same config, original names."""

    def __init__(self, peft_model: Any):  # a peft PeftModel
        self._model = peft_model.get_base_model()
        self._adapters = set(peft_model.peft_config)
        self.config = self._model.config

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        for name, param in self._model.named_parameters():
            parts = name.split(".")
            if self._adapters.intersection(parts):  # lora_A.<adapter>.weight, modules_to_save.<adapter>.weight, ...
                continue
            yield ".".join(p for p in parts if p not in _WRAPPER_PARTS), param


def base_fingerprint(model: torch.nn.Module) -> str:
    """`model_fingerprint` of the base weights: for a peft-wrapped model the same value as for the plain base.

    Args:
        model: an HF causal LM, possibly wrapped by peft (`PeftModel`).
    """
    return model_fingerprint(_BaseWeights(model) if is_peft_model(model) else model)  # type: ignore[arg-type]


def write_info(folder: str | Path, info: dict[str, Any]) -> Path:
    """Write `caa_finetune.json` atomically (it is written last: its presence marks a complete adapter)."""
    return write_atomic(
        Path(folder) / INFO_FILE, json.dumps(dict(info, format=FORMAT), indent=2, sort_keys=True) + "\n"
    )


def read_info(folder: str | Path) -> dict[str, Any] | None:
    """The recorded finetune facts of an adapter folder, None if it was not made by `caa-eval finetune`."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CAAEvalError(f"{path}: not valid JSON ({exc}); delete the folder and finetune again") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CAAEvalError(f"{path}: not a caa-eval finetune record (format {FORMAT} expected)")
    return info


def is_complete(folder: str | Path) -> bool:
    """True when the folder holds a saved adapter and its finetune record."""
    folder = Path(folder)
    return all((folder / f).is_file() for f in _ADAPTER_FILES) and (folder / INFO_FILE).is_file()


def adapter_summary(peft: str | Path, fingerprint: str | None = None) -> dict[str, Any]:
    """What results should say about an adapter: its path and, if caa-eval made it, behaviour and direction.

    Args:
        peft: the adapter path (or hub id) given to HFLM.
        fingerprint: the loaded base model's fingerprint, compared with the recorded one.
    """
    summary: dict[str, Any] = {"path": str(peft)}
    info = read_info(peft) if Path(peft).is_dir() else None
    if info:
        summary.update({k: info.get(k) for k in ("behaviour", "direction", "model", "data_sha256", "final_loss")})
        summary["base_fingerprint"] = info.get("model_fingerprint")
        if fingerprint and info.get("model_fingerprint") and info["model_fingerprint"] != fingerprint:
            log.warning(
                "adapter %s was trained on a model with fingerprint %s, the loaded base has %s",
                peft,
                str(info["model_fingerprint"])[:12],
                fingerprint[:12],
            )
    return summary
