"""Steering-vector files: one `.safetensors` per behaviour, one vector per layer, JSON metadata in the header.

The header makes a file self-describing (which model, site, read position, data hash, normalisation), so
loading can refuse a vector that does not fit the model instead of silently steering garbage.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from caa_eval.core.steering_vector import (  # noqa: F401  (the file format's checks, re-exported for readers)
    _HEADER_TYPES,
    _META_KEY,
    FORMAT,
    SteeringVector,
    _as_vector,
    _check_finite,
    _check_site,
    _check_sizes,
    _layer_of_key,
    _read_header,
    ranges,
)
from caa_eval.errors import CAAEvalError
from caa_eval.vocab import CAA_VECTOR_RE, behaviour_key

__all__ = [
    "FORMAT",
    "VECTOR_SUFFIXES",
    "SteeringVector",
    "load",
    "ranges",
    "validate_for_model",
    "model_fingerprint",
    "normalize_to_mean_norm",
]

VECTOR_SUFFIXES = (".safetensors", ".pt", ".pth", ".gguf")
_USE = (
    "write a .safetensors file with `caa-eval extract`, or pass CAA's vec_layer_<L>_<model>.pt, an "
    "lm-eval steered .pt or a llama.cpp/repeng control vector .gguf"
)


def load(path: str | Path) -> SteeringVector:
    """Load a caa-eval `.safetensors` file, CAA's bare-tensor `.pt`, lm-eval `steered`'s `.pt`, or a llama.cpp /
    repeng control-vector `.gguf`; the format is told from the content (a `.pt` that is a GGUF reads as one).

    Every problem with the file (missing, wrong type, malformed header, odd tensor names or shapes, NaN) is a
    one-line CAAEvalError naming the file; pickled objects are never executed (torch.load weights_only=True).

    Args:
        path: the vector file (recorded as the vector's `source`).
    """
    sv = _load(Path(path))
    sv.source = str(path)
    return sv


def _load(path: Path) -> SteeringVector:
    if path.is_dir():
        raise CAAEvalError(
            f"{path} is a folder, not a vector file; pass one .safetensors file (a CAA vectors/ "
            "folder: convert it with `caa-eval import-caa`)"
        )
    if not path.is_file():
        raise CAAEvalError(f"vector file not found: {path}; check the path ({_USE})")
    if path.suffix not in VECTOR_SUFFIXES:
        raise CAAEvalError(
            f"{path}: a vector file ends in .safetensors (caa-eval), .pt (CAA, lm-eval steered) or .gguf "
            f"(llama.cpp, repeng), not {path.suffix or 'no suffix'!r}; rename it if it is one, else {_USE}"
        )
    if path.stat().st_size == 0:
        raise CAAEvalError(f"{path}: the file is empty (an interrupted copy?); {_USE}")
    from caa_eval.core.formats import gguf, sniff

    kind = sniff(path)
    if kind == "gguf" or (kind == "unknown" and path.suffix == ".gguf"):
        return gguf.read(path)
    if kind == "torch" or (kind == "unknown" and path.suffix in (".pt", ".pth")):
        return _load_pt(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CAAEvalError(f"{path}: not a readable safetensors file ({why}); {_USE}") from None
    if _META_KEY not in header:
        raise CAAEvalError(
            f"{path}: no caa-eval metadata in the header; create it with `caa-eval extract` "
            "(or `caa-eval import-caa` for CAA's .pt files)"
        )
    meta = _read_header(path, header[_META_KEY])
    vectors = {_layer_of_key(path, key): _as_vector(path, key, tensor) for key, tensor in tensors.items()}
    if not vectors:
        raise CAAEvalError(f"{path}: the file holds no vectors; re-extract it with `caa-eval extract`")
    _check_sizes(path, vectors, meta.get("hidden_size"))
    if "layers" in meta and sorted(meta["layers"]) != sorted(vectors):
        raise CAAEvalError(
            f"{path}: the header lists layers {meta['layers']} but the file holds layers "
            f"{sorted(vectors)}; the file is corrupt: re-extract it"
        )
    known = {name for name, f in SteeringVector.__dataclass_fields__.items() if f.init and name != "vectors"}
    return SteeringVector(vectors=vectors, **{k: v for k, v in meta.items() if k in known})


def _load_pt(path: Path) -> SteeringVector:
    try:
        config = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CAAEvalError(
            f"{path}: cannot load safely with weights_only=True ({type(exc).__name__}); "
            "caa-eval never unpickles arbitrary objects; pass a tensor file saved with torch.save "
            "or a .safetensors file"
        ) from None
    if torch.is_tensor(config):
        return _load_caa_pt(path, config)
    if not isinstance(config, dict) or not config:
        raise CAAEvalError(
            f"{path}: expected CAA's bare tensor or lm-eval steered's dict of hookpoint -> "
            f"{{steering_vector, steering_coefficient}}, found {type(config).__name__}"
            f"{' (empty)' if isinstance(config, dict) else ''}"
        )
    from caa_eval.core.formats import lmeval

    return lmeval.read(path, config)


def _load_caa_pt(path: Path, tensor: torch.Tensor) -> SteeringVector:
    caa = CAA_VECTOR_RE.match(path.name)
    if caa is None:
        raise CAAEvalError(
            f"{path}: a bare tensor has no layer; name it like CAA (vec_layer_<L>_<model>.pt), "
            "convert a CAA folder with `caa-eval import-caa`, or use lm-eval steered's dict format"
        )
    vectors = {int(caa["layer"]): _as_vector(path, "the tensor", tensor).to(torch.float32)}
    _check_sizes(path, vectors)
    normalized = path.parent.parent.name == "normalized_vectors"
    return SteeringVector(
        vectors=vectors,
        behaviour=behaviour_key(path.parent.name),
        model=caa["model"],
        normalization={"method": "caa_mean_norm", "source": "CAA normalized_vectors"} if normalized else None,
        extra={"source": str(path)},
    )


def validate_for_model(
    sv: SteeringVector,
    hidden_size: int,
    fingerprint: str,
    layers: list[int],
    n_layers: int,
    allow_fingerprint_mismatch: bool = False,
    source: str = "vector file",
) -> None:
    """Refuse vectors that cannot be meant for this model (shape, hidden size, layers, fingerprint)."""
    for layer, v in sv.vectors.items():
        if not torch.is_tensor(v) or v.dim() != 1 or not v.dtype.is_floating_point:
            what = f"shape {list(v.shape)}, dtype {v.dtype}" if torch.is_tensor(v) else type(v).__name__
            raise CAAEvalError(
                f"{source}: the vector for layer {layer} has {what}; pass 1-D float tensors, one per layer"
            )
    _check_finite(sv.vectors, source)
    if sv.hidden_size != hidden_size:
        raise CAAEvalError(
            f"{source}: vectors have size {sv.hidden_size}, the model's hidden size is {hidden_size}: "
            f"this vector was extracted from a different model ({sv.model})"
        )
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise CAAEvalError(f"layers {bad} out of range: the model has layers 0..{n_layers - 1}")
    sv.select(layers, source)
    if sv.model_fingerprint and fingerprint and sv.model_fingerprint != fingerprint and not allow_fingerprint_mismatch:
        raise CAAEvalError(
            f"{source} was extracted from {sv.model} (fingerprint {sv.model_fingerprint[:12]}), not this model "
            f"({fingerprint[:12]}); pass allow_fingerprint_mismatch=true to apply it anyway (e.g. base->chat transfer)"
        )


def model_fingerprint(model: torch.nn.Module) -> str:
    """Identify the weights cheaply: architecture config, parameter shapes, and a bf16-rounded sample of
    the first and last weights (bf16 rounding makes fp32/bf16 copies of one checkpoint agree)."""
    config: Any = getattr(model, "config", None)  # an HF PretrainedConfig when present
    cfg = config.to_dict() if config is not None else {}
    keep = (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
    )
    h = hashlib.sha256(json.dumps({k: cfg.get(k) for k in keep}, sort_keys=True).encode())
    params = list(model.named_parameters())
    for name, p in params:
        h.update(f"{name}:{tuple(p.shape)};".encode())
    for name, p in (params[0], params[-1]):
        h.update(_weight_sample(model, name, p).numpy().tobytes())
    return h.hexdigest()


def _weight_sample(model: torch.nn.Module, name: str, p: torch.Tensor) -> torch.Tensor:
    """First 256 values, bf16-rounded; a weight accelerate offloaded to CPU/disk (on `meta` between forwards,
    as with `device_map`/`parallelize=True` and too little GPU memory) is read through its module's offload hook."""
    if p.device.type == "meta" and hasattr(model, "get_submodule"):
        from accelerate.utils import align_module_device

        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        with align_module_device(module, torch.device("cpu")):
            return getattr(module, attr).detach().reshape(-1)[:256].to("cpu", torch.bfloat16).to(torch.float32)
    return p.detach().reshape(-1)[:256].to("cpu", torch.bfloat16).to(torch.float32)


def normalize_to_mean_norm(vectors: list[SteeringVector]) -> list[SteeringVector]:
    """CAA's per-layer rescaling: every behaviour's vector gets the mean norm across behaviours at that layer."""
    if len(vectors) < 2:
        raise CAAEvalError("normalize needs at least two behaviours' vector files")
    sizes = {v.hidden_size for v in vectors}
    if len(sizes) != 1:
        raise CAAEvalError(f"vector files have different hidden sizes {sorted(sizes)}; they come from different models")
    common = sorted(set.intersection(*(set(v.layers) for v in vectors)))
    if not common:
        raise CAAEvalError("the vector files share no layer")
    mean_norm = {
        layer: float(torch.stack([v.vectors[layer].float().norm() for v in vectors]).mean()) for layer in common
    }
    out = []
    for v in vectors:
        factors = {}
        for layer in common:
            norm = float(v.vectors[layer].float().norm())
            if norm == 0 or not math.isfinite(norm):
                raise CAAEvalError(f"{v.behaviour}: vector at layer {layer} has norm {norm}; cannot rescale")
            factors[layer] = mean_norm[layer] / norm
        restricted = replace(v, vectors={layer: v.vectors[layer] for layer in common})
        out.append(
            restricted.scaled(
                factors,
                {
                    "method": "caa_mean_norm",
                    "behaviours": [x.behaviour for x in vectors],
                    "mean_norm": {str(k): round(val, 6) for k, val in mean_norm.items()},
                    "scale": {str(k): round(val, 6) for k, val in factors.items()},
                },
            )
        )
    return out
