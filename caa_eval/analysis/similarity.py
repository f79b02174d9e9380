"""How steering vectors relate: across the layers of one file (CAA §8.2) and layer by layer between two
files (§8.3: base vs chat model, two behaviours, two datasets).

Cosines are computed in float64 on the vectors as stored (CAA's `analyze_vectors.py` also uses the raw,
unnormalised vectors; a per-layer rescaling does not change a cosine anyway).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caa_eval.core.vectors import SteeringVector
from caa_eval.errors import CAAEvalError
from caa_eval.files import write_atomic

__all__ = [
    "LayerMatrix",
    "layer_matrix",
    "layer_matrix_csv",
    "compare_files",
    "comparison_csv",
    "plot_layer_matrix",
    "plot_comparison",
]


@dataclass
class LayerMatrix:
    """Cosine between the vectors of every pair of layers; `matrix[i, j]` is layers[i] vs layers[j]."""

    layers: list[int]
    matrix: np.ndarray

    def rows(self) -> list[tuple[int, int, float]]:
        """All ordered pairs (diagonal included) as (layer_a, layer_b, cosine)."""
        return [(a, b, float(self.matrix[i, j])) for i, a in enumerate(self.layers) for j, b in enumerate(self.layers)]


def _unit_rows(vectors: list[np.ndarray], labels: list[str]) -> np.ndarray:
    stacked = np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in vectors])
    norms = np.linalg.norm(stacked, axis=1)
    zero = [label for label, n in zip(labels, norms) if not n > 0]
    if zero:
        raise CAAEvalError(f"vector(s) at {', '.join(zero)} have norm 0: a cosine is undefined; re-extract them")
    return stacked / norms[:, None]


def layer_matrix(sv: SteeringVector) -> LayerMatrix:
    """Cosine similarity between the file's vectors at every pair of its layers.

    Args:
        sv: a loaded vector file (`caa_eval.core.vectors.load`).
    """
    layers = sv.layers
    if len(layers) < 2:
        raise CAAEvalError(f"the file holds only layer(s) {layers}; extract with --layers all to compare layers")
    unit = _unit_rows([sv.vectors[layer].float().numpy() for layer in layers], [f"layer {x}" for x in layers])
    matrix = np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(matrix, 1.0)  # exactly 1 (rounding in the product can give 0.9999999999999998)
    return LayerMatrix(layers, matrix)


def _csv(header: list[str], rows: list[tuple]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{x:.8f}" if isinstance(x, float) else x for x in row])
    return buf.getvalue()


def layer_matrix_csv(result: LayerMatrix, path: str | Path) -> Path:
    """Write columns `layer_a,layer_b,cosine`, every ordered pair, atomically."""
    return write_atomic(path, _csv(["layer_a", "layer_b", "cosine"], result.rows()))


def compare_files(
    a: SteeringVector, b: SteeringVector, name_a: str = "A", name_b: str = "B"
) -> list[tuple[int, float]]:
    """Per common layer, the cosine between file A's and file B's vector: [(layer, cosine), …].

    Args:
        a, b: loaded vector files from models of the same hidden size (e.g. Llama-2-7b base and chat).
        name_a, name_b: how the files are named in error messages.
    """
    if a.hidden_size != b.hidden_size:
        raise CAAEvalError(
            f"{name_a} has vectors of size {a.hidden_size}, {name_b} of size {b.hidden_size}: "
            "compare files from models with the same hidden size (same architecture)"
        )
    common = sorted(set(a.layers) & set(b.layers))
    if not common:
        raise CAAEvalError(
            f"{name_a} (layers {a.layers[0]}..{a.layers[-1]}) and {name_b} "
            f"(layers {b.layers[0]}..{b.layers[-1]}) share no layer"
        )
    ua = _unit_rows([a.vectors[x].float().numpy() for x in common], [f"{name_a} layer {x}" for x in common])
    ub = _unit_rows([b.vectors[x].float().numpy() for x in common], [f"{name_b} layer {x}" for x in common])
    cos = np.clip((ua * ub).sum(axis=1), -1.0, 1.0)
    return [(layer, float(c)) for layer, c in zip(common, cos)]


def comparison_csv(rows: list[tuple[int, float]], path: str | Path) -> Path:
    """Write columns `layer,cosine` atomically."""
    return write_atomic(path, _csv(["layer", "cosine"], rows))


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_layer_matrix(result: LayerMatrix, path: str | Path, title: str) -> Path:
    """Heat map of the layer × layer cosine matrix (diverging scale −1 … 1, CAA's Figure 7).

    Args:
        result: the matrix.
        path: output PNG.
        title: figure title (e.g. behaviour and model).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.layers)
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=130)
    im = ax.imshow(result.matrix, cmap="RdBu", vmin=-1, vmax=1, origin="upper")
    step = max(1, n // 10)
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks, [str(result.layers[i]) for i in ticks])
    ax.set_yticks(ticks, [str(result.layers[i]) for i in ticks])
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="cosine similarity")
    return _save(fig, path)


def plot_comparison(series: dict[str, list[tuple[int, float]]], path: str | Path, title: str) -> Path:
    """Line plot of cosine vs layer, one line per labelled comparison (CAA's Figure 9).

    Args:
        series: label -> [(layer, cosine), …] (one entry for `similarity files`).
        path: output PNG.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=130)
    for label, rows in series.items():
        ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", ms=3, label=label)
    ax.axhline(0, color="#999", lw=0.8)
    ax.set_ylim(min(-0.05, *(r[1] for rows in series.values() for r in rows)) - 0.05, 1.05)
    ax.set_xlabel("layer")
    ax.set_ylabel("cosine similarity")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)
