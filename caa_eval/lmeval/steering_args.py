"""The `steered-hf` model arguments checked without the model: a bad argument costs no model load.

`checked_steering` turns `set_steering` keywords into checked values (vector file loaded, multiplier a float,
layer spec parsed); the model-dependent checks follow in `SteeredHFLM`. `reject_unknown` stops typos in
`--model_args` that HFLM would otherwise pass on to `from_pretrained`.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from lm_eval.models.huggingface import HFLM

from caa_eval.core import vectors as vector_files
from caa_eval.core.positions import Positions
from caa_eval.errors import CAAEvalError
from caa_eval.vocab import format_multiplier, parse_layers, parse_multiplier, parse_site

__all__ = ["STEERING_ARGS", "FROM_PRETRAINED_ARGS", "checked_steering", "reject_unknown", "one_layer"]

STEERING_ARGS = (
    "vector",
    "layers",
    "multiplier",
    "site",
    "positions",
    "allow_fingerprint_mismatch",
    "layers_path",
    "vector_layer",
    "chat_template",
)
# Extra kwargs HFLM forwards to `from_pretrained`; anything else unknown is almost surely a typo.
FROM_PRETRAINED_ARGS = (
    "attn_implementation",
    "low_cpu_mem_usage",
    "device_map",
    "quantization_config",
    "load_in_8bit",
    "load_in_4bit",
    "torch_dtype",
    "cache_dir",
    "local_files_only",
    "token",
    "use_safetensors",
    "offload_state_dict",
    "variant",
)


def _as_bool(value: Any, name: str = "value") -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes"):
        return True
    if str(value).lower() in ("0", "false", "no", "none", ""):
        return False
    raise CAAEvalError(f"{name}={value!r} not understood; write {name}=true or {name}=false")


def _check_steering_args(
    vector: Any, layers: Any, multiplier: Any, site: Any, positions: Any, allow_fingerprint_mismatch: Any
) -> dict[str, Any]:
    """Every steering argument checked without the model (the model-dependent checks follow in set_steering).

    Returns `set_steering` keywords with the vector file loaded, the multiplier a float and the layer spec's
    syntax checked, so a bad argument costs no model load.
    """
    m = parse_multiplier(multiplier)
    Positions.parse(positions)
    if site is not None:
        parse_site(site, hint="or leave it out: the vector's own site")
    if layers is not None:
        parse_layers(layers)
    allow = _as_bool(allow_fingerprint_mismatch, "allow_fingerprint_mismatch")
    if isinstance(vector, str) and not vector.strip():
        raise CAAEvalError(
            "vector= is empty; write vector=FILE.safetensors, or leave vector out (with "
            "multiplier=0) for the unsteered model"
        )
    if vector is None:
        if m != 0:
            raise CAAEvalError(
                f"multiplier={format_multiplier(m)} needs a vector: add vector=FILE.safetensors, or "
                "write multiplier=0 for the unsteered model (the default multiplier is 1)"
            )
        sv, source = None, None
    elif isinstance(vector, vector_files.SteeringVector):
        sv, source = vector, vector.source or f"{vector.behaviour} vector"
    else:
        sv, source = vector_files.load(vector), str(vector)
    return {
        "vector": sv,
        "source": source,
        "layers": layers,
        "multiplier": m,
        "site": site,
        "positions": positions,
        "allow_fingerprint_mismatch": allow,
    }


def checked_steering(
    vector: Any = None,
    layers: Any = None,
    multiplier: Any = 1.0,
    site: Any = None,
    positions: Any = "after_instruction",
    allow_fingerprint_mismatch: Any = False,
    vector_layer: Any = None,
) -> dict[str, Any]:
    """`set_steering`'s arguments (with its defaults) checked without the model."""
    checked = _check_steering_args(vector, layers, multiplier, site, positions, allow_fingerprint_mismatch)
    checked["vector_layer"] = one_layer(vector_layer)
    return checked


def one_layer(spec: Any) -> int | None:
    """`vector_layer`: one layer index or None."""
    if spec is None or spec == "":
        return None
    layers = parse_layers(spec, name="vector_layer")
    if layers is None or len(layers) != 1:
        count = "every" if layers is None else len(layers)
        raise CAAEvalError(f"vector_layer={spec!r} names {count} layers; write one, e.g. vector_layer=13")
    return layers[0]


def reject_unknown(kwargs: dict[str, Any]) -> None:
    known = set(inspect.signature(HFLM.__init__).parameters) | set(FROM_PRETRAINED_ARGS) | set(STEERING_ARGS)
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; steering args are {', '.join(STEERING_ARGS)}"
            raise CAAEvalError(f"steered-hf: unknown model_arg {key!r}{hint}")
