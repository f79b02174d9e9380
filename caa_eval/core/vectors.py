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
from safetensors.torch import save_file

from caa_eval import __version__
from caa_eval.errors import CAAEvalError
from caa_eval.vocab import CAA_VECTOR_RE, SITES, behaviour_key

FORMAT = "caa-eval/vector-v1"
_META_KEY = "caa_eval"
# lm-eval `steered` hookpoints are relative to model.base_model: "layers.13", "layers.13.mlp", ...
_STEERED_SITES = {"": "residual", "mlp": "mlp", "self_attn": "attn", "attn": "attn"}


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
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer.{layer}": self.vectors[layer].detach().cpu().contiguous() for layer in self.layers}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt", _META_KEY: json.dumps(self.metadata())})
        tmp.replace(path)
        return path

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


def _check_site(site: str) -> None:
    if site not in SITES:
        raise CAAEvalError(f"unknown site {site!r}; use one of {', '.join(SITES)}")


def _check_finite(vectors: dict[int, torch.Tensor], source: str) -> None:
    for layer, v in vectors.items():
        if not torch.isfinite(v).all():
            raise CAAEvalError(f"{source}: vector for layer {layer} contains NaN or inf; re-extract it")


def load(path: str | Path) -> SteeringVector:
    """Load a caa-eval `.safetensors` file, or lm-eval `steered`'s `.pt` format (never unpickling objects)."""
    path = Path(path)
    if not path.is_file():
        raise CAAEvalError(f"vector file not found: {path}")
    if path.suffix in (".pt", ".pth"):
        return _load_lm_eval_pt(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CAAEvalError(f"{path}: not a readable safetensors file ({exc})") from None
    if _META_KEY not in header:
        raise CAAEvalError(f"{path}: no caa-eval metadata in the header; create it with `caa-eval extract`")
    meta = json.loads(header[_META_KEY])
    vectors = {}
    for key, tensor in tensors.items():
        if not key.startswith("layer."):
            raise CAAEvalError(f"{path}: unexpected tensor {key!r} (expected 'layer.<n>')")
        vectors[int(key.split(".", 1)[1])] = tensor.reshape(-1)
    if not vectors:
        raise CAAEvalError(f"{path}: file holds no vectors")
    _check_finite(vectors, str(path))
    _check_site(meta.get("site", "residual"))
    sizes = {v.numel() for v in vectors.values()}
    if len(sizes) != 1 or (meta.get("hidden_size") and sizes != {meta["hidden_size"]}):
        raise CAAEvalError(f"{path}: vectors have sizes {sorted(sizes)}, header says {meta.get('hidden_size')}; file is corrupt")
    known = {f for f in SteeringVector.__dataclass_fields__ if f not in ("vectors",)}
    return SteeringVector(vectors=vectors, **{k: v for k, v in meta.items() if k in known})


def _load_lm_eval_pt(path: Path) -> SteeringVector:
    try:
        config = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CAAEvalError(f"{path}: cannot load safely with weights_only=True ({type(exc).__name__}); "
                           "caa-eval never unpickles arbitrary objects") from None
    if torch.is_tensor(config):
        caa = CAA_VECTOR_RE.match(path.name)
        if caa is None or config.dim() != 1:
            raise CAAEvalError(f"{path}: a bare tensor has no layer; name it like CAA (vec_layer_<L>_<model>.pt), "
                               "convert a CAA folder with `caa-eval import-caa`, or use lm-eval steered's dict format")
        vectors = {int(caa["layer"]): config.to(torch.float32)}
        _check_finite(vectors, str(path))
        normalized = path.parent.parent.name == "normalized_vectors"
        return SteeringVector(vectors=vectors, behaviour=behaviour_key(path.parent.name), model=caa["model"],
                              normalization={"method": "caa_mean_norm", "source": "CAA normalized_vectors"} if normalized else None,
                              extra={"source": str(path)})
    if not isinstance(config, dict) or not config:
        raise CAAEvalError(f"{path}: expected a dict of hookpoint -> config (lm-eval `steered` format)")
    vectors: dict[int, torch.Tensor] = {}
    sites = set()
    for hookpoint, entry in config.items():
        parts = str(hookpoint).split(".")
        if len(parts) < 2 or parts[0] != "layers" or not parts[1].isdigit():
            raise CAAEvalError(f"{path}: hookpoint {hookpoint!r} not understood; expected 'layers.<n>[.mlp|.self_attn]'")
        site = _STEERED_SITES.get(".".join(parts[2:]))
        if site is None:
            raise CAAEvalError(f"{path}: hookpoint {hookpoint!r}: only block output, .mlp and .self_attn are supported")
        if entry.get("action", "add") != "add" or entry.get("bias") is not None or entry.get("head_index") is not None:
            raise CAAEvalError(f"{path}: {hookpoint}: only action 'add' without bias/head_index maps to CAA")
        vec = entry["steering_vector"].reshape(-1).to(torch.float32) * float(entry.get("steering_coefficient", 1.0))
        vectors[int(parts[1])] = vec
        sites.add(site)
    if len(sites) != 1:
        raise CAAEvalError(f"{path}: mixes sites {sorted(sites)}; caa-eval steers one site per file")
    _check_finite(vectors, str(path))
    return SteeringVector(vectors=vectors, site=sites.pop(), model="unknown (lm-eval steered .pt)", extra={"source": str(path)})


def validate_for_model(sv: SteeringVector, hidden_size: int, fingerprint: str, layers: list[int],
                       n_layers: int, allow_fingerprint_mismatch: bool = False, source: str = "vector file") -> None:
    """Refuse vectors that cannot be meant for this model (hidden size, layers, fingerprint)."""
    if sv.hidden_size != hidden_size:
        raise CAAEvalError(f"{source}: vectors have size {sv.hidden_size}, the model's hidden size is {hidden_size}: "
                           f"this vector was extracted from a different model ({sv.model})")
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
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    keep = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "vocab_size")
    h = hashlib.sha256(json.dumps({k: cfg.get(k) for k in keep}, sort_keys=True).encode())
    params = list(model.named_parameters())
    for name, p in params:
        h.update(f"{name}:{tuple(p.shape)};".encode())
    for _, p in (params[0], params[-1]):
        sample = p.detach().reshape(-1)[:256].to("cpu", torch.bfloat16).to(torch.float32)
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


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
    mean_norm = {layer: float(torch.stack([v.vectors[layer].float().norm() for v in vectors]).mean()) for layer in common}
    out = []
    for v in vectors:
        factors = {}
        for layer in common:
            norm = float(v.vectors[layer].float().norm())
            if norm == 0 or not math.isfinite(norm):
                raise CAAEvalError(f"{v.behaviour}: vector at layer {layer} has norm {norm}; cannot rescale")
            factors[layer] = mean_norm[layer] / norm
        restricted = replace(v, vectors={layer: v.vectors[layer] for layer in common})
        out.append(restricted.scaled(factors, {
            "method": "caa_mean_norm", "behaviours": [x.behaviour for x in vectors],
            "mean_norm": {str(k): round(val, 6) for k, val in mean_norm.items()},
            "scale": {str(k): round(val, 6) for k, val in factors.items()},
        }))
    return out
