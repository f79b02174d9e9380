"""repeng's saved control vector: the GGUF `ControlVector.export_gguf` writes and `import_gguf` reads.

The container is llama.cpp's (see `caa_eval.core.formats.gguf`, which also reads it back). repeng's own
conventions: `directions[layer]` is steered at `model.layers[layer]`'s output, 0-based like caa-eval (its
extraction reads `hidden_states[layer + 1]`), so layer 0 is allowed; `controlvector.model_hint` is the
model's `config.model_type`; `controlvector.layer_count` is a uint32 (number of directions). repeng's
ControlModel steers every position except left padding.
"""

from __future__ import annotations

from pathlib import Path

from caa_eval.core.formats.gguf import write_control_vector
from caa_eval.core.steering_vector import SteeringVector

__all__ = ["write"]


def write(sv: SteeringVector, out: str | Path, model_hint: str | None = None, multiplier: float = 1.0) -> Path:
    """repeng's GGUF (`ControlVector.import_gguf(OUT)`).

    Args:
        sv: residual-stream vectors, any layers (repeng steers block 0 too).
        out: the .gguf file.
        model_hint: repeng's `model_type` (default: the model's config.json `model_type`, else its name).
        multiplier: scales the vectors (repeng multiplies again by `set_control(vector, coeff)`).
    """
    return write_control_vector(sv, out, model_hint, multiplier, layer_count_type="uint32")
