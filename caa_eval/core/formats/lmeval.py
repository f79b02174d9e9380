"""lm-eval's `steered` model file: a `.pt` dict `{hookpoint: {steering_vector, steering_coefficient, action,
bias, head_index}}` (lm_eval/models/hf_steered.py, lm-eval 0.4.13).

Hookpoints are module names under `model.base_model`, so for Llama-family HF models `layers.N` is decoder
block N's output (caa-eval layer N, 0-based), `layers.N.mlp` / `layers.N.self_attn` the mlp/attn sites. The
`add` action adds `steering_coefficient x steering_vector` at every position (padding too; harmless, as
padding is masked or after the real tokens). lm-eval loads the file with `torch.load(weights_only=False)`;
caa-eval writes only tensors, numbers, None and strings, so it also loads with `weights_only=True`, and
reads with `weights_only=True` only. lm-eval ignores unknown keys in an entry: caa-eval's metadata rides in
`caa_eval` (JSON) and survives a round trip.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import torch

from caa_eval.core.steering_vector import SteeringVector, _as_vector, _check_finite, _check_sizes, _read_header
from caa_eval.errors import CAAEvalError
from caa_eval.files import write_atomic

__all__ = ["hookpoint", "write", "read"]

_SITE_SUFFIX = {"residual": "", "mlp": ".mlp", "attn": ".self_attn"}
# hookpoint suffix -> caa-eval site (lm-eval users also write ".attn")
_STEERED_SITES = {"": "residual", "mlp": "mlp", "self_attn": "attn", "attn": "attn"}
_META = "caa_eval"


def hookpoint(layer: int, site: str = "residual") -> str:
    """lm-eval's hookpoint for caa-eval's layer and site (module name under `model.base_model`)."""
    return f"layers.{layer}{_SITE_SUFFIX[site]}"


def write(sv: SteeringVector, out: str | Path, multiplier: float = 1.0) -> Path:
    """The `.pt` for `lm_eval --model steered --model_args pretrained=M,steer_path=OUT`.

    Args:
        sv: the vectors; every layer becomes one hookpoint at the vector's site.
        out: the .pt file (lm-eval picks its loader by the suffix).
        multiplier: written as each hookpoint's `steering_coefficient` (vectors are stored unscaled).
    """
    if not math.isfinite(multiplier):
        raise CAAEvalError(f"--multiplier {multiplier} is not a finite number")
    _check_finite(sv.vectors, "vector")
    meta = json.dumps(sv.metadata())
    config = {
        hookpoint(layer, sv.site): {
            "steering_vector": sv.vectors[layer].detach().to(torch.float32).cpu().clone(),
            "steering_coefficient": float(multiplier),
            "action": "add",
            "bias": None,
            "head_index": None,
            _META: meta,
        }
        for layer in sv.layers
    }
    buffer = io.BytesIO()
    torch.save(config, buffer)
    return write_atomic(out, buffer.getvalue())


def read(path: Path, config: dict[Any, Any]) -> SteeringVector:
    """lm-eval steered's dict (already loaded with weights_only=True): each vector times its coefficient, so
    `multiplier=1` in steered-hf adds what lm-eval adds."""
    vectors: dict[int, torch.Tensor] = {}
    sites = set()
    stored = None
    for point, entry in config.items():
        layer, site = _parse_hookpoint(path, point)
        coefficient = _check_entry(path, point, entry)
        vectors[layer] = _as_vector(path, point, entry["steering_vector"]).to(torch.float32) * coefficient
        sites.add(site)
        stored = entry.get(_META, stored)
    if len(sites) != 1:
        raise CAAEvalError(f"{path}: mixes sites {sorted(sites)}; caa-eval steers one site per file")
    _check_sizes(path, vectors)
    site = sites.pop()
    if not isinstance(stored, str):
        return SteeringVector(
            vectors=vectors, site=site, model="unknown (lm-eval steered .pt)", extra={"source": str(path)}
        )
    meta = _read_header(path, stored)
    known = {f for f in SteeringVector.__dataclass_fields__ if f not in ("vectors", "site")}
    return SteeringVector(vectors=vectors, site=site, **{k: v for k, v in meta.items() if k in known})


def _parse_hookpoint(path: Path, point: Any) -> tuple[int, str]:
    parts = str(point).split(".")
    if len(parts) < 2 or parts[0] != "layers" or not parts[1].isdigit():
        raise CAAEvalError(f"{path}: hookpoint {point!r} not understood; expected 'layers.<n>[.mlp|.self_attn]'")
    site = _STEERED_SITES.get(".".join(parts[2:]))
    if site is None:
        raise CAAEvalError(f"{path}: hookpoint {point!r}: only block output, .mlp and .self_attn are supported")
    return int(parts[1]), site


def _check_entry(path: Path, point: Any, entry: Any) -> float:
    """The entry is an `add` without bias/head_index; returns its finite coefficient."""
    if not isinstance(entry, dict):
        raise CAAEvalError(
            f"{path}: {point}: expected {{steering_vector, steering_coefficient}}, found a "
            f"{type(entry).__name__}; write lm-eval steered's format"
        )
    if "steering_vector" not in entry:
        raise CAAEvalError(
            f"{path}: {point} has no 'steering_vector' (fields: {', '.join(map(str, entry))}); "
            "add the vector as a 1-D tensor"
        )
    if entry.get("action", "add") != "add" or entry.get("bias") is not None or entry.get("head_index") is not None:
        raise CAAEvalError(f"{path}: {point}: only action 'add' without bias/head_index maps to CAA")
    coefficient = entry.get("steering_coefficient", 1.0)
    if isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)) or not math.isfinite(coefficient):
        raise CAAEvalError(
            f"{path}: {point}: steering_coefficient is {coefficient!r}; write a finite number such as 1.0"
        )
    return float(coefficient)
