"""Steering vectors in other tools' formats: llama.cpp control vectors (GGUF), repeng, lm-eval `steered`, CAA.

`sniff` tells a file's container from its first bytes (not its suffix), so `load_vector` reads every format;
`convert` writes one target format and says which metadata the target cannot carry. One module per format:
`gguf` (llama.cpp), `repeng` (repeng's GGUF export), `lmeval` (lm-eval's `steered` .pt); CAA's own layout is
`caa_eval.core.caa_layout`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from caa_eval.core.steering_vector import SteeringVector
from caa_eval.errors import CAAEvalError

__all__ = ["TARGETS", "sniff", "convert", "check_target"]

# target -> what the output is (checked before anything is read or written)
TARGETS = {
    "gguf": "a .gguf file (llama.cpp --control-vector)",
    "lm-eval": "a .pt file (lm_eval --model steered, steer_path=)",
    "repeng": "a .gguf file (repeng ControlVector.import_gguf)",
    "caa": "a folder (CAA's <behaviour>/vec_layer_<L>_<model>.pt)",
}
_SUFFIX = {"gguf": (".gguf",), "repeng": (".gguf",), "lm-eval": (".pt", ".pth")}


def sniff(path: Path) -> str:
    """`gguf`, `torch` (a torch.save zip or pickle), `safetensors`, or `unknown`, from the first bytes."""
    with path.open("rb") as f:
        head = f.read(16)
    if head[:4] == b"GGUF":
        return "gguf"
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if head[8:9] == b"{" and 0 < header_len < path.stat().st_size:  # u64 JSON header length, then the JSON
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "torch"  # torch.save's zip, or a legacy pickle
    return "unknown"


def check_target(target: str, out: str | Path) -> None:
    """The target name and the output's suffix (llama.cpp and lm-eval pick their loader by suffix)."""
    if target not in TARGETS:
        raise CAAEvalError(f"--to {target!r} not understood; write one of {', '.join(TARGETS)}")
    suffixes = _SUFFIX.get(target)
    if suffixes and Path(out).suffix not in suffixes:
        raise CAAEvalError(f"--to {target} writes {TARGETS[target]}: name --out ...{suffixes[0]}, not {Path(out).name}")
    if target == "caa" and Path(out).is_file():
        raise CAAEvalError(f"--to caa writes {TARGETS['caa']}; --out {out} is a file: name a folder")


def convert(
    sv: SteeringVector, target: str, out: str | Path, model_hint: str | None = None, multiplier: float = 1.0
) -> tuple[list[Path], list[str]]:
    """Write `sv` in a target format.

    Args:
        sv: the vectors (any format `load_vector` reads).
        target: one of TARGETS.
        out: output file (folder for `caa`).
        model_hint: the model name the target records (GGUF `controlvector.model_hint`, CAA's `<model>`).
        multiplier: lm-eval: its `steering_coefficient`; the other formats have no coefficient, so the vectors
            are scaled by it (what the tool adds at its default strength 1).

    Returns:
        the files written and warnings (what the target cannot carry or steer), one line each.
    """
    from caa_eval.core.formats import gguf, lmeval, repeng

    check_target(target, out)
    if target == "gguf":
        if 0 in sv.vectors and len(sv.vectors) > 1:  # llama.cpp refuses direction.0: keep the layers it can steer
            rest = replace(sv, vectors={k: v for k, v in sv.vectors.items() if k != 0})
            return [gguf.write(rest, out, model_hint, multiplier)], [
                "layer 0 left out: llama.cpp refuses direction.0 (block 0's output cannot be steered there)"
            ]
        return [gguf.write(sv, out, model_hint, multiplier)], []
    if target == "repeng":
        return [repeng.write(sv, out, model_hint, multiplier)], []
    if target == "lm-eval":
        return [lmeval.write(sv, out, multiplier)], []
    return _write_caa(sv, Path(out), model_hint, multiplier)


def _write_caa(
    sv: SteeringVector, out: Path, model_hint: str | None, multiplier: float
) -> tuple[list[Path], list[str]]:
    """CAA's bare tensors keep only behaviour (folder), layer and model name (file name)."""
    from caa_eval.core.caa_layout import write_caa_dir

    if sv.site != "residual":
        raise CAAEvalError(f"CAA's vectors are block outputs (site residual); this vector is at site {sv.site!r}")
    scaled = replace(sv, vectors={layer: v * multiplier for layer, v in sv.vectors.items()})
    written = write_caa_dir([scaled], out, model=model_hint)
    defaults = SteeringVector(vectors={})
    kept_by_folder = ("normalization",) if out.name == "normalized_vectors" else ()  # CAA's reader tells by it
    lost = [
        name
        for name in ("model_fingerprint", "read_position", "n_pairs", "dataset_sha256", "aggregation", "normalization")
        if getattr(sv, name) != getattr(defaults, name) and name not in kept_by_folder
    ]
    lost += ["extra"] if sv.extra else []
    return written, [f"CAA's .pt layout cannot carry: {', '.join(lost)}"] if lost else []
