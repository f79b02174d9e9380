"""caa-eval: Contrastive Activation Addition (CAA) steering evaluated inside lm-evaluation-harness.

The public Python API (imported lazily, so `import caa_eval` stays light):

- `SteeringVector`, `load_vector(path)`: the self-describing vector file format.
- `extract(model, tokenizer, pairs, layers=…)`: CAA vectors from contrast pairs (mean difference at the answer letter).
- `Steering` / `steer(model, {layer: vector}, multiplier, …)`: hook-based CAA as a context manager.
- `SteeredHFLM`: the `steered-hf` lm-eval model.
- `run_sweep(config)`: layers × multipliers × sites × conditions in one process, with a report.
- `paired_stats(table)`: per-cell paired tests against multiplier 0 with CIs and multiple-comparison correction.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "SteeringVector",
    "load_vector",
    "extract",
    "Steering",
    "steer",
    "SteeredHFLM",
    "run_sweep",
    "paired_stats",
    "__version__",
]

_LAZY = {
    "SteeringVector": ("caa_eval.core.vectors", "SteeringVector"),
    "load_vector": ("caa_eval.core.vectors", "load"),
    "extract": ("caa_eval.core.extract", "extract_vectors"),
    "Steering": ("caa_eval.core.hooks", "Steering"),
    "steer": ("caa_eval.core.hooks", "steer"),
    "SteeredHFLM": ("caa_eval.lmeval.model", "SteeredHFLM"),
    "run_sweep": ("caa_eval.sweep", "run_sweep"),
    "paired_stats": ("caa_eval.stats", "paired_stats"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'caa_eval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
