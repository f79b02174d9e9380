"""CAA's published vectors in and out: `<dir>/<behavior>/vec_layer_<L>_<model>.pt`, bare tensors.

CAA saves one tensor per behaviour, layer and model under `vectors/` (raw mean differences) and the same
names under `normalized_vectors/` (rescaled per layer to the mean norm across behaviours). Importing turns
them into caa-eval vector files, one per model and behaviour, with every layer found and the
normalisation recorded, so `steered-hf` can use them directly. Loading never unpickles objects.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch

from caa_eval.core.steering_vector import SteeringVector
from caa_eval.errors import CAAEvalError
from caa_eval.vocab import CAA_VECTOR_RE, behaviour_key

__all__ = ["read_caa_dir", "detect_normalized", "import_caa_dir", "write_caa_dir"]
NORMALIZATION = {"method": "caa_mean_norm", "source": "CAA normalized_vectors"}


def _load_tensor(path: Path) -> torch.Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or a broken file
        raise CAAEvalError(
            f"{path}: not a tensor file that loads safely ({type(exc).__name__}); "
            "CAA's files are bare tensors saved with torch.save"
        ) from None
    if not torch.is_tensor(obj) or obj.dim() != 1 or obj.numel() == 0:
        raise CAAEvalError(
            f"{path}: expected a bare 1-D tensor (CAA's format), got {type(obj).__name__}"
            f"{' of shape ' + str(tuple(obj.shape)) if torch.is_tensor(obj) else ''}"
        )
    if not torch.isfinite(obj).all():
        raise CAAEvalError(f"{path}: the vector contains NaN or inf")
    return obj.float()


def read_caa_dir(folder: str | Path) -> dict[str, dict[str, dict[int, torch.Tensor]]]:
    """model -> behaviour -> layer -> vector, from a CAA `vectors/` or `normalized_vectors/` folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CAAEvalError(f"{folder} is not a folder; pass CAA's vectors/ or normalized_vectors/ folder")
    found: dict[str, dict[str, dict[int, torch.Tensor]]] = defaultdict(lambda: defaultdict(dict))
    for path in sorted(folder.glob("*/vec_layer_*.pt")):
        m = CAA_VECTOR_RE.match(path.name)
        if m:
            found[m["model"]][behaviour_key(path.parent.name)][int(m["layer"])] = _load_tensor(path)
    if not found:
        raise CAAEvalError(
            f"{folder}: no <behavior>/vec_layer_<L>_<model>.pt files; pass CAA's vectors/ or normalized_vectors/ folder"
        )
    return {model: dict(b) for model, b in found.items()}


def detect_normalized(folder: Path, behaviours: dict[str, dict[int, torch.Tensor]]) -> bool | None:
    """True/False when the folder name or the norms tell; None when they cannot (then the user must say)."""
    if folder.name == "normalized_vectors":
        return True
    if folder.name == "vectors":
        return False
    if len(behaviours) < 2:
        return None
    common = set.intersection(*(set(layers) for layers in behaviours.values()))
    equal = all(
        math.isclose(min(n), max(n), rel_tol=1e-4)
        for layer in common
        for n in [[float(v[layer].norm()) for v in behaviours.values()]]
    )
    return True if equal and common else False


def import_caa_dir(folder: str | Path, out_dir: str | Path, normalized: bool | None = None) -> list[Path]:
    """Write `out_dir/<model>/<behaviour>.safetensors` for every model and behaviour in a CAA folder.

    Args:
        folder: CAA's `vectors/` (raw) or `normalized_vectors/` folder, or a copy of either.
        out_dir: where to write the caa-eval vector files.
        normalized: whether the files are CAA-normalised; None = detect from the folder name or the norms.
    """
    folder = Path(folder)
    written = []
    for model, behaviours in read_caa_dir(folder).items():
        is_normalized = normalized if normalized is not None else detect_normalized(folder, behaviours)
        if is_normalized is None:
            raise CAAEvalError(
                f"{folder}: cannot tell whether these vectors are CAA-normalised; "
                "pass --normalized yes (normalized_vectors/) or --normalized no (vectors/)"
            )
        for behaviour, layers in sorted(behaviours.items()):
            sizes = {v.numel() for v in layers.values()}
            if len(sizes) != 1:
                raise CAAEvalError(f"{folder}/{behaviour}: layers have different sizes {sorted(sizes)}")
            sv = SteeringVector(
                vectors=layers,
                behaviour=behaviour,
                model=model,
                site="residual",
                read_position="answer_letter (CAA: [INST] q [/INST] (X), letter at index -2)",
                normalization=dict(NORMALIZATION, behaviours=sorted(behaviours)) if is_normalized else None,
                extra={"imported_from": str(folder), "format": "CAA vec_layer_<L>_<model>.pt"},
            )
            written.append(sv.save(Path(out_dir) / model / f"{behaviour}.safetensors"))
    return written


def write_caa_dir(vectors: list[SteeringVector], folder: str | Path, model: str | None = None) -> list[Path]:
    """The reverse: CAA's layout from caa-eval files (bare float tensors; for CAA's own scripts)."""
    written = []
    for sv in vectors:
        name = model or sv.model.rstrip("/").split("/")[-1]
        for layer in sv.layers:
            path = Path(folder) / sv.behaviour / f"vec_layer_{layer}_{name}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(sv.vectors[layer].detach().cpu().clone(), path)
            written.append(path)
    return written
