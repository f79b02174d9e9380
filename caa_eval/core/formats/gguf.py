"""llama.cpp control vectors: a GGUF with `general.architecture = controlvector`, `controlvector.model_hint`,
`controlvector.layer_count` and one 1-D F32 tensor `direction.N` per layer.

Layer numbering (llama.cpp as vendored in llama-cpp-python 0.3.36; docs/vectors.md has the lines):
`direction.N` is added to the output of decoder block N, counted from 0 (`build_cvec(cur, il)` after block
`il`'s residual add), which is caa-eval's layer N (HF `hidden_states[N+1]`): the numbers map one to one.
`direction.0` is refused by llama.cpp's loader (block 0's output cannot be steered there), so writing one is
refused here. Every position of every batch is steered (prompt and generated tokens). llama.cpp ignores
other keys, so caa-eval's own metadata travels in `caa_eval.metadata` (JSON) and survives a round trip.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from caa_eval.core.steering_vector import SteeringVector, _as_vector, _check_finite, _check_sizes, _read_header
from caa_eval.errors import CAAEvalError

__all__ = ["ARCH", "METADATA_KEY", "write", "write_control_vector", "read", "model_type_hint"]

ARCH = "controlvector"
METADATA_KEY = "caa_eval.metadata"


def model_type_hint(sv: SteeringVector) -> str:
    """What llama.cpp's cvector-generator and repeng record as model_hint: the model's architecture name
    (e.g. `llama`), read from the model folder's config.json when the vector names a local folder or the embedded
    model (already prepared)."""
    from caa_eval.models import DEFAULT_MODEL, model_dir

    config = (model_dir() if sv.model == DEFAULT_MODEL else Path(sv.model)) / "config.json"
    try:
        return str(json.loads(config.read_text())["model_type"])
    except (OSError, ValueError, KeyError, TypeError):
        return sv.model


def write(sv: SteeringVector, out: str | Path, model_hint: str | None = None, multiplier: float = 1.0) -> Path:
    """llama.cpp's control vector (`--control-vector FILE`).

    Args:
        sv: residual-stream vectors; layer 0 is refused (llama.cpp cannot steer block 0's output).
        out: the .gguf file.
        model_hint: `controlvector.model_hint` (default: the model's architecture name, else its name).
        multiplier: scales the vectors (llama.cpp's `--control-vector-scaled FILE S` scales them again).
    """
    if 0 in sv.vectors:
        raise CAAEvalError(
            "llama.cpp refuses direction.0 (block 0's output cannot be steered there); drop layer 0 "
            "(e.g. extract --layers 1-29) or convert --to repeng, which steers block 0"
        )
    return write_control_vector(sv, out, model_hint, multiplier, layer_count_type="int32")


def write_control_vector(
    sv: SteeringVector, out: str | Path, model_hint: str | None, multiplier: float, layer_count_type: str
) -> Path:
    """The GGUF both llama.cpp and repeng read, written atomically (temp file + rename).

    Args:
        sv: the vectors; `direction.N` holds caa-eval layer N.
        out: the .gguf file.
        model_hint: `controlvector.model_hint`.
        multiplier: scales the vectors (the format has no coefficient).
        layer_count_type: `int32` (llama.cpp's cvector-generator) or `uint32` (repeng's export_gguf).
    """
    if sv.site != "residual":
        raise CAAEvalError(
            f"control vectors are added to block outputs (site residual); this vector is at site {sv.site!r}: "
            "convert --to lm-eval keeps mlp/attn sites"
        )
    _check_finite(sv.vectors, "vector")
    meta = dict(sv.metadata(), extra={**sv.extra, **({"multiplier_applied": multiplier} if multiplier != 1 else {})})

    def fill(writer: Any) -> None:
        writer.add_string(f"{ARCH}.model_hint", model_hint or model_type_hint(sv))
        getattr(writer, f"add_{layer_count_type}")(f"{ARCH}.layer_count", len(sv.layers))
        writer.add_string(METADATA_KEY, json.dumps(meta))
        for layer in sv.layers:
            vector = (sv.vectors[layer].detach().to(torch.float32) * multiplier).cpu().numpy()
            writer.add_tensor(f"direction.{layer}", np.ascontiguousarray(vector, dtype=np.float32))

    return write_gguf(Path(out), ARCH, fill)


def write_gguf(out: Path, arch: str, fill: Callable[[Any], None]) -> Path:
    """Write a GGUF with gguf's writer into a temp file beside `out`, then rename: never a half-written file.

    Args:
        out: the .gguf file.
        arch: `general.architecture`.
        fill: adds the key-values and tensors to the writer.
    """
    import gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        fill(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out


def read(path: Path) -> SteeringVector:
    """A control-vector GGUF from caa-eval, llama.cpp's cvector-generator or repeng; `direction.N` -> layer N."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:
        raise CAAEvalError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    arch = _string(reader, "general.architecture")
    if arch != ARCH:
        raise CAAEvalError(
            f"{path}: a GGUF with architecture {arch!r}, not a control vector ({ARCH!r}); "
            "pass a control vector file (llama.cpp cvector-generator, repeng export_gguf, caa-eval convert)"
        )
    vectors = {_layer(path, t.name): _tensor(path, t) for t in reader.tensors}
    if not vectors:
        raise CAAEvalError(f"{path}: the control vector holds no direction.N tensors")
    _check_sizes(path, vectors)
    hint = _string(reader, f"{ARCH}.model_hint") or "unknown"
    stored = _string(reader, METADATA_KEY)
    if stored is None:
        return SteeringVector(
            vectors=vectors,
            model=hint,
            extra={"source": str(path), "format": "GGUF control vector", "model_hint": hint},
        )
    meta = _read_header(path, stored)
    if "layers" in meta and sorted(meta["layers"]) != sorted(vectors):
        raise CAAEvalError(f"{path}: metadata lists layers {meta['layers']} but the file holds {sorted(vectors)}")
    known = {f for f in SteeringVector.__dataclass_fields__ if f != "vectors"}
    return SteeringVector(vectors=vectors, **{k: v for k, v in meta.items() if k in known})


def _string(reader: Any, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None:
        return None
    value = field.contents()
    return value if isinstance(value, str) else None


def _layer(path: Path, name: str) -> int:
    prefix, _, number = name.partition(".")
    if prefix != "direction" or not number.isdigit():
        raise CAAEvalError(f"{path}: tensor {name!r} is not named direction.<layer>; llama.cpp refuses such files")
    return int(number)


def _tensor(path: Path, tensor: Any) -> torch.Tensor:
    if len(tensor.shape) != 1 and int(np.prod(tensor.shape)) != max(tensor.shape):
        raise CAAEvalError(f"{path}: {tensor.name} has shape {list(tensor.shape)}; control vectors are 1-D")
    values = np.array(tensor.data, dtype=np.float32).reshape(-1)
    return _as_vector(path, tensor.name, torch.from_numpy(values))
