"""Steering-vector files: one `.safetensors` per behaviour, one vector per layer, JSON metadata in the header.

The header makes a file self-describing (which model, site, read position, data hash, normalisation), so
loading can refuse a vector that does not fit the model instead of silently steering garbage.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_bytes

from caa_eval import __version__
from caa_eval.errors import CAAEvalError
from caa_eval.files import write_atomic
from caa_eval.vocab import CAA_VECTOR_RE, SITES, behaviour_key

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

FORMAT = "caa-eval/vector-v1"
_META_KEY = "caa_eval"


@dataclass
class SteeringVector:
    """Per-layer vectors for one behaviour plus the facts needed to use them correctly."""

    vectors: dict[int, torch.Tensor]
    behaviour: str = "unknown"
    model: str = "unknown"
    model_fingerprint: str = ""
    site: str = "residual"
    read_position: str = "answer_letter"
    n_pairs: int = 0
    dataset_sha256: str = ""
    aggregation: str = "mean_difference"
    normalization: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.vectors.values())).numel())

    @property
    def dtype(self) -> str:
        return str(next(iter(self.vectors.values())).dtype).removeprefix("torch.")

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "behaviour": self.behaviour,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "layers": self.layers,
            "site": self.site,
            "hidden_size": self.hidden_size,
            "dtype": self.dtype,
            "read_position": self.read_position,
            "n_pairs": self.n_pairs,
            "dataset_sha256": self.dataset_sha256,
            "aggregation": self.aggregation,
            "normalization": self.normalization,
            "caa_eval_version": __version__,
            "extra": self.extra,
        }

    def sha256(self) -> str:
        """Content hash over the vectors and the metadata that changes their meaning."""
        h = hashlib.sha256()
        for layer in self.layers:
            h.update(f"{layer}:".encode())
            h.update(self.vectors[layer].detach().to(torch.float32).contiguous().numpy().tobytes())
        h.update(json.dumps([self.site, self.normalization], sort_keys=True, default=str).encode())
        return h.hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename): an interrupted save never leaves a half file."""
        path = Path(path)
        _check_site(self.site)
        if not self.vectors:
            raise CAAEvalError("refusing to save a steering vector file with no layers")
        _check_finite(self.vectors, str(path))
        tensors = {f"layer.{layer}": self.vectors[layer].detach().cpu().contiguous() for layer in self.layers}
        return write_atomic(
            path, save_bytes(tensors, metadata={"format": "pt", _META_KEY: json.dumps(self.metadata())})
        )

    def scaled(self, factor_per_layer: dict[int, float], normalization: dict[str, Any]) -> SteeringVector:
        return replace(
            self,
            vectors={layer: v * factor_per_layer[layer] for layer, v in self.vectors.items()},
            normalization=normalization,
        )

    def select(self, layers: list[int], source: str = "vector file") -> dict[int, torch.Tensor]:
        missing = [layer for layer in layers if layer not in self.vectors]
        if missing:
            raise CAAEvalError(
                f"{source} has no vector for layer(s) {missing}; it has layers {ranges(self.layers)} "
                f"(re-extract with --layers including them)"
            )
        return {layer: self.vectors[layer] for layer in layers}


def ranges(layers: list[int]) -> str:
    return ",".join(map(str, layers)) if len(layers) < 8 else f"{layers[0]}..{layers[-1]} ({len(layers)} layers)"


def _check_site(site: str, source: str = "") -> None:
    if site not in SITES:
        raise CAAEvalError(f"{source + ': ' if source else ''}unknown site {site!r}; use one of {', '.join(SITES)}")


def _check_finite(vectors: dict[int, torch.Tensor], source: str) -> None:
    for layer, v in vectors.items():
        if not torch.isfinite(v).all():
            raise CAAEvalError(f"{source}: vector for layer {layer} contains NaN or inf; re-extract it")


VECTOR_SUFFIXES = (".safetensors", ".pt", ".pth", ".gguf")
_USE = (
    "write a .safetensors file with `caa-eval extract`, or pass CAA's vec_layer_<L>_<model>.pt, an "
    "lm-eval steered .pt or a llama.cpp/repeng control vector .gguf"
)
# header field -> (accepted types, what to write) for the caa-eval metadata
_HEADER_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "format": ((str,), f"{FORMAT!r}"),
    "behaviour": ((str,), "a name"),
    "model": ((str,), "a model name"),
    "model_fingerprint": ((str,), "a hex string"),
    "layers": ((list,), "a list of layer numbers"),
    "site": ((str,), "one of " + "/".join(SITES)),
    "hidden_size": ((int,), "an integer"),
    "dtype": ((str,), "a dtype name"),
    "read_position": ((str,), "a text"),
    "n_pairs": ((int,), "an integer"),
    "dataset_sha256": ((str,), "a hex string"),
    "aggregation": ((str,), "a name"),
    "normalization": ((dict, type(None)), "an object or null"),
    "caa_eval_version": ((str,), "a version"),
    "extra": ((dict,), "an object"),
}


def load(path: str | Path) -> SteeringVector:
    """Load a caa-eval `.safetensors` file, CAA's bare-tensor `.pt`, lm-eval `steered`'s `.pt`, or a llama.cpp /
    repeng control-vector `.gguf`; the format is told from the content (a `.pt` that is a GGUF reads as one).

    Every problem with the file (missing, wrong type, malformed header, odd tensor names or shapes, NaN) is a
    one-line CAAEvalError naming the file; pickled objects are never executed (torch.load weights_only=True).

    Args:
        path: the vector file.
    """
    path = Path(path)
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
    known = {f for f in SteeringVector.__dataclass_fields__ if f not in ("vectors",)}
    return SteeringVector(vectors=vectors, **{k: v for k, v in meta.items() if k in known})


def _read_header(path: Path, text: str) -> dict[str, Any]:
    """The caa-eval JSON header, checked field by field (a wrong type would fail much later, unnamed)."""
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CAAEvalError(
            f"{path}: the caa-eval header is not valid JSON ({exc.msg} at character {exc.pos}); "
            "re-extract the file with `caa-eval extract`"
        ) from None
    if not isinstance(meta, dict):
        raise CAAEvalError(
            f"{path}: the caa-eval header is a JSON {type(meta).__name__}, not an object; "
            "re-extract the file with `caa-eval extract`"
        )
    for key, (types, expected) in _HEADER_TYPES.items():
        value = meta.get(key)
        if key in meta and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise CAAEvalError(
                f"{path}: header field {key!r} is {value!r}; it must be {expected} "
                "(re-extract the file, or fix the header)"
            )
    if meta.get("format", FORMAT) != FORMAT:
        raise CAAEvalError(
            f"{path}: header format {meta['format']!r} is not {FORMAT!r}; this caa-eval "
            f"({__version__}) reads {FORMAT} files only"
        )
    if any(isinstance(x, bool) or not isinstance(x, int) for x in meta.get("layers", [])):
        raise CAAEvalError(f"{path}: header field 'layers' is {meta['layers']!r}; it must be a list of integers")
    _check_site(meta.get("site", "residual"), str(path))
    return meta


def _layer_of_key(path: Path, key: str) -> int:
    number = key.removeprefix("layer.")
    if not key.startswith("layer.") or not number.isdigit():
        raise CAAEvalError(
            f"{path}: tensor {key!r} is not named 'layer.<n>' (n = 0, 1, ...); the file was not "
            "written by caa-eval: re-extract it with `caa-eval extract`"
        )
    return int(number)


def _as_vector(path: Path, name: str, tensor: Any) -> torch.Tensor:
    """A 1-D float vector; a (1, H) row is accepted (lm-eval steered writes those), any other shape is refused."""
    if not torch.is_tensor(tensor):
        raise CAAEvalError(
            f"{path}: {name} is a {type(tensor).__name__}, not a tensor; save the steering vector as a 1-D tensor"
        )
    shape = tuple(tensor.shape)
    if tensor.dim() == 0 or tensor.numel() == 0 or sum(1 for d in shape if d != 1) > 1 or tensor.numel() != shape[-1]:
        raise CAAEvalError(
            f"{path}: {name} has shape {list(shape)}; a steering vector is 1-D with the model's "
            "hidden size (e.g. [4096]); save one vector per layer"
        )
    if not tensor.dtype.is_floating_point:
        raise CAAEvalError(
            f"{path}: {name} has dtype {str(tensor.dtype).removeprefix('torch.')}; steering "
            "vectors are floating point (float32, bfloat16, float16)"
        )
    return tensor.reshape(-1)


def _check_sizes(path: Path, vectors: dict[int, torch.Tensor], header_size: Any = None) -> None:
    _check_finite(vectors, str(path))
    sizes = {layer: v.numel() for layer, v in vectors.items()}
    if len(set(sizes.values())) != 1:
        by_size = ", ".join(
            f"{n} at layer(s) {ranges([k for k, s in sizes.items() if s == n])}" for n in sorted(set(sizes.values()))
        )
        raise CAAEvalError(
            f"{path}: the vectors have different sizes ({by_size}); one file holds one model's vectors: re-extract it"
        )
    size = next(iter(sizes.values()))
    if header_size is not None and header_size != size:
        raise CAAEvalError(
            f"{path}: the header says hidden_size {header_size} but the vectors have size {size}; "
            "the file is corrupt: re-extract it"
        )


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
