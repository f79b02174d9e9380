"""The `llama-cpp` parity backend: log-likelihoods from llama.cpp (llama-cpp-python) with a control vector.

llama-cpp-python binds llama.cpp's C API but not its `common` library, whose `common_control_vector_load`
turns a control-vector GGUF into the buffer `llama_set_adapter_cvec` takes. `_cvec_buffer` does what that
loader does (common/common.cpp: `direction.0` refused, `direction.N` at offset `n_embd * (N - 1)`, layer range
1..n_layer as `common_init_from_params` sets it); which block's output each slot is added to is decided by
llama.cpp itself (llama-adapter.cpp, `build_cvec` in the model graph), and that is what parity checks.

The embedded model ships as a Q4_1 GGUF; caa-eval's HF copy holds its dequantized weights. For a like-for-like
comparison `embedded_f32_gguf` writes the same dequantized weights back as an F32 GGUF (once, in the cache).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from caa_eval.core.formats.gguf import write_gguf
from caa_eval.errors import CAAEvalError

__all__ = ["INSTALL_HINT", "available", "require", "embedded_f32_gguf", "LlamaCppScorer"]

INSTALL_HINT = (
    "pip install 'caa-eval[llamacpp]' (llama-cpp-python; it compiles llama.cpp with the machine's C/C++ compiler "
    "and cmake, ~45 min on 2 cores)"
)


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def require() -> None:
    """Refuse the backend in one line when llama-cpp-python is not installed (before any model load)."""
    if not available():
        raise CAAEvalError(f"the llama-cpp backend needs llama-cpp-python, which is not installed: {INSTALL_HINT}")


def embedded_f32_gguf() -> Path:
    """The embedded model's GGUF with every tensor dequantized to F32 (the weights caa-eval's HF copy holds)."""
    from caa_eval.models import GGUF_NAME, gguf_path, model_dir

    out = model_dir().parent / GGUF_NAME.replace(".gguf", ".f32.gguf")
    if not out.is_file():
        dequantize_gguf(gguf_path(), out)
    return out


def dequantize_gguf(src: Path, out: Path) -> Path:
    """Copy a model GGUF with F32 tensors (metadata kept, file type set to all-F32), atomically.

    Args:
        src: a (quantized) model GGUF.
        out: where the F32 copy goes.
    """
    import gguf
    from tqdm import tqdm

    reader = gguf.GGUFReader(src)
    arch = reader.get_field("general.architecture")
    if arch is None:
        raise CAAEvalError(f"{src}: a GGUF without general.architecture; pass a model GGUF")

    def fill(writer: Any) -> None:
        for field in reader.fields.values():
            if field.name in ("general.architecture", "general.file_type") or field.name.startswith("GGUF."):
                continue
            kind = field.types[0]
            sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        for tensor in tqdm(reader.tensors, desc="dequantizing GGUF", leave=False):
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            writer.add_tensor(tensor.name, np.ascontiguousarray(values))

    return write_gguf(out, str(arch.contents()), fill)


def _cvec_buffer(path: Path, n_embd: int) -> np.ndarray:
    """llama.cpp's control-vector buffer from a GGUF: layer 1 at offset 0 (common_control_vector_load_one)."""
    import gguf

    reader = gguf.GGUFReader(path)
    directions: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        prefix, _, number = tensor.name.partition(".")
        if prefix != "direction" or not number.isdigit() or int(number) == 0:
            raise CAAEvalError(f"{path}: llama.cpp refuses tensor {tensor.name!r} (direction.N with N >= 1 only)")
        directions[int(number)] = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
    if any(v.size != n_embd for v in directions.values()):
        raise CAAEvalError(f"{path}: direction sizes differ from the model's n_embd {n_embd}")
    buffer = np.zeros(n_embd * max(directions), dtype=np.float32)
    for layer, values in directions.items():
        buffer[n_embd * (layer - 1) : n_embd * layer] += values
    return buffer


class LlamaCppScorer:
    """Log-likelihoods of continuations from token ids, with an optional control vector applied.

    Args:
        model_gguf: the model's GGUF file.
        control_vector: a control-vector GGUF (`caa-eval convert --to gguf`), or None for the plain model.
        n_ctx: context length (the logits of every position are kept: keep it near the longest request).
    """

    def __init__(self, model_gguf: Path, control_vector: Path | None, n_ctx: int = 512):
        require()
        from llama_cpp import Llama, llama_cpp

        threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or max(1, (os.cpu_count() or 2) // 2)
        # llama.cpp keeps its KV cache in F16 by default, which alone moves log p by ~5e-3 on the embedded model;
        # an F32 cache brings it to ~1e-5 of the HF model, so what remains is the steering
        self.llm: Any = Llama(
            model_path=str(model_gguf), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
            n_threads=threads, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
        )  # fmt: skip
        if control_vector is not None:
            n_embd, n_layer = self.llm.n_embd(), llama_cpp.llama_model_n_layer(self.llm.model)
            data = _cvec_buffer(control_vector, n_embd)
            pointer = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            if llama_cpp.llama_set_adapter_cvec(self.llm.ctx, pointer, data.size, n_embd, 1, n_layer) != 0:
                raise CAAEvalError(f"llama.cpp refused the control vector {control_vector}")

    def loglikelihood(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), greedy?) per (context ids, continuation ids) pair."""
        out = []
        for context, continuation in pairs:
            tokens = list(context) + list(continuation)
            self.llm.reset()
            self.llm.eval(tokens)
            logits = np.asarray(self.llm.scores[len(context) - 1 : len(tokens) - 1], dtype=np.float64)
            shifted = logits - logits.max(axis=-1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            picked = logp[np.arange(len(continuation)), continuation]
            out.append((float(picked.sum()), bool((logits.argmax(axis=-1) == np.asarray(continuation)).all())))
        return out
