"""The steering vector object and the checks every vector reader applies (one copy for every file format).

`caa_eval.core.vectors` loads and saves files of every format on top of this; the foreign formats
(`caa_eval.core.formats`) build on it without importing the loader back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_bytes

from caa_eval import __version__
from caa_eval.errors import CAAEvalError
from caa_eval.files import write_atomic
from caa_eval.vocab import SITES, parse_site

__all__ = ["FORMAT", "SteeringVector", "ranges"]

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
    # not part of the file: where it was loaded from (the label runs record), and the content hash, computed once
    # (a changed copy made with `dataclasses.replace` starts without either; do not change `vectors` in place)
    source: str | None = field(default=None, init=False, repr=False, compare=False)
    _sha256: str | None = field(default=None, init=False, repr=False, compare=False)

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
        """Content hash over the vectors and the metadata that changes their meaning (computed once)."""
        if self._sha256 is not None:
            return self._sha256
        h = hashlib.sha256()
        for layer in self.layers:
            h.update(f"{layer}:".encode())
            h.update(self.vectors[layer].detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
        h.update(json.dumps([self.site, self.normalization], sort_keys=True, default=str).encode())
        self._sha256 = h.hexdigest()
        return self._sha256

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
    parse_site(site, source)


def _check_finite(vectors: dict[int, torch.Tensor], source: str) -> None:
    for layer, v in vectors.items():
        if not torch.isfinite(v).all():
            raise CAAEvalError(f"{source}: vector for layer {layer} contains NaN or inf; re-extract it")


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
