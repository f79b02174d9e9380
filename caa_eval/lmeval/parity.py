"""Backend parity: the same lm-eval items through steered-hf, lm-eval's own `steered` model and llama.cpp, each
with the vector converted to its own format, and the log-likelihoods compared item by item.

A converter can be off by one layer or steer other positions without any error; parity makes that visible.
Every backend here steers every position, so steered-hf runs with `positions=all`. The instances are built
once (lm-eval's task machinery, steered-hf's chat template) and handed to each backend's `loglikelihood`,
so the items, prompts and token ids are the same for all; the per-item metrics come from the task's own
`process_results`.
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from caa_eval.core.vectors import SteeringVector
from caa_eval.errors import CAAEvalError

__all__ = ["BACKENDS", "ParityItem", "ParityReport", "check_backends", "run_parity"]

# backend -> the positions it steers (what the report prints)
BACKENDS = {
    "steered-hf": "all positions (positions=all)",
    "lm-eval-steered": "all positions (its `add` hook; padding too, which no real token attends to)",
    "llama-cpp": "all positions of every batch (llama.cpp control vector)",
}


@dataclass
class ParityItem:
    """One doc: the answers' log-likelihoods and the task's metrics per backend."""

    doc_id: int
    answers: list[str]
    loglikelihoods: dict[str, list[float]] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    def max_abs_diff(self, reference: str) -> float:
        ref = self.loglikelihoods[reference]
        return max(
            (abs(a - b) for name, lls in self.loglikelihoods.items() if name != reference for a, b in zip(lls, ref)),
            default=0.0,
        )


@dataclass
class ParityReport:
    """Per-item comparison of backends against the first one; `verdict()` is the one-line answer."""

    setting: dict[str, Any]
    backends: dict[str, dict[str, str]]
    items: list[ParityItem]
    tolerance: float

    @property
    def reference(self) -> str:
        return next(iter(self.backends))

    def worst(self) -> tuple[float, int | None]:
        diffs = [(item.max_abs_diff(self.reference), item.doc_id) for item in self.items]
        return max(diffs, default=(0.0, None))

    def verdict(self) -> str:
        diff, doc_id = self.worst()
        if diff <= self.tolerance:
            return f"agree to {diff:.0e}"
        return f"differ: max |Δ log p| {diff:.2g} on item {doc_id}"

    def to_json(self) -> dict[str, Any]:
        diff, doc_id = self.worst()
        return {
            **self.setting,
            "backends": self.backends,
            "tolerance": self.tolerance,
            "max_abs_diff": diff,
            "worst_item": doc_id,
            "verdict": self.verdict(),
            "items": [
                {
                    "doc_id": item.doc_id,
                    "answers": item.answers,
                    "loglikelihood": item.loglikelihoods,
                    "metrics": item.metrics,
                    "max_abs_diff": item.max_abs_diff(self.reference),
                }
                for item in self.items
            ],
        }

    def lines(self, metric: str | None = None) -> list[str]:
        """A plain-text table: per item and answer the log-likelihood per backend, then the item's metric."""
        names = list(self.backends)
        first = self.items[0].metrics[names[0]] if self.items else {}
        shown = metric or ("p_match" if "p_match" in first else next(iter(first), None))
        out = [f"{'item':>5} {'answer':>8} " + " ".join(f"{n:>16}" for n in names) + f" {'max |Δ|':>9}"]
        for item in self.items:
            for k, answer in enumerate(item.answers):
                values = " ".join(f"{item.loglikelihoods[n][k]:16.6f}" for n in names)
                diff = max(abs(item.loglikelihoods[n][k] - item.loglikelihoods[names[0]][k]) for n in names)
                out.append(f"{item.doc_id:>5} {answer!r:>8} {values} {diff:9.1e}")
            if shown is not None:
                values = " ".join(f"{item.metrics[n].get(shown, math.nan):16.6f}" for n in names)
                out.append(f"{'':>5} {shown:>8} {values}")
        return out


def check_backends(spec: str | list[str]) -> list[str]:
    """The backend list, checked before anything loads (llama-cpp: is llama-cpp-python installed?)."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or len(names) < 2 or len(set(names)) != len(names):
        raise CAAEvalError(
            f"--backends {','.join(names)!s}: name two or more different backends of {', '.join(BACKENDS)}"
            + (f" ({', '.join(unknown)} unknown)" if unknown else "")
        )
    if "llama-cpp" in names:
        from caa_eval.lmeval.llamacpp import require

        require()
    return names


def run_parity(
    model: str,
    vector: SteeringVector,
    layers: list[int],
    multiplier: float,
    task: str,
    backends: list[str],
    limit: int | None = None,
    batch_size: int = 1,
    tolerance: float = 1e-4,
    model_gguf: Path | None = None,
    device: str | None = None,
    task_manager: Any = None,
) -> ParityReport:
    """Run `task`'s items through each backend with `vector` at `layers` and compare their log-likelihoods.

    Args:
        model: HF model path or the embedded alias (steered-hf and lm-eval-steered share one loaded copy).
        vector: the vectors (from any format); the chosen layers are converted for each backend.
        layers: caa-eval layers to steer (0-based block outputs).
        multiplier: steered-hf's multiplier, lm-eval's steering_coefficient, baked into the GGUF for llama.cpp.
        task: one lm-eval task with log-likelihood requests (e.g. caa_ab_sycophancy).
        backends: names from BACKENDS; the first is the reference of the comparison.
        limit: first N docs of the task.
        batch_size: for the HF backends.
        tolerance: largest |Δ log p| that still counts as agreement.
        model_gguf: the model as GGUF for llama-cpp (default for the embedded model: its F32 copy).
        device: for the HF backends (default: cuda if available, else cpu).
        task_manager: lm-eval TaskManager (default: lm-eval's tasks and caa-eval's).
    """
    from caa_eval.lmeval.model import SteeredHFLM
    from caa_eval.models import resolve_device

    missing = [layer for layer in layers if layer not in vector.vectors]
    if missing:
        raise CAAEvalError(f"the vector has no layer(s) {missing}; it has {vector.layers}")
    chosen = replace(vector, vectors={layer: vector.vectors[layer] for layer in layers})
    if "llama-cpp" in backends:
        model_gguf = _model_gguf(model, model_gguf)
    hf = SteeredHFLM(
        pretrained=model, vector=chosen, layers=layers, multiplier=multiplier, positions="all", batch_size=batch_size,
        device=resolve_device(device),
    )  # fmt: skip
    instances, task_obj = _instances(task, hf, limit, task_manager)
    lls: dict[str, list[tuple[float, bool]]] = {}
    files: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="caa-eval-parity-") as tmp:
        for name in backends:
            lls[name], source = _run_backend(name, hf, chosen, multiplier, instances, Path(tmp), model_gguf)
            files[name] = {"positions": BACKENDS[name], "vector": source}
    setting = {
        "model": model,
        "layers": layers,
        "multiplier": multiplier,
        "task": task,
        "limit": limit,
        "vector_sha256": chosen.sha256(),
    }
    return ParityReport(setting, files, _items(instances, task_obj, lls), tolerance)


def _model_gguf(model: str, given: Path | None) -> Path:
    from caa_eval.lmeval.llamacpp import embedded_f32_gguf, require
    from caa_eval.models import DEFAULT_MODEL

    require()
    if given is not None:
        if not Path(given).is_file():
            raise CAAEvalError(f"--gguf {given}: file not found; pass the model as a GGUF file")
        return Path(given)
    if model != DEFAULT_MODEL:
        raise CAAEvalError(f"llama-cpp needs the model {model} as a GGUF: pass --gguf FILE")
    return embedded_f32_gguf()


def _instances(task: str, lm: Any, limit: int | None, manager: Any) -> tuple[list[Any], Any]:
    """The task's requests, built once with the HF model's chat template (as `lm_eval --apply_chat_template`)."""
    from lm_eval.tasks import get_task_dict

    from caa_eval.lmeval.run import default_task_manager

    manager = manager or default_task_manager()
    if task not in manager.all_subtasks:
        raise CAAEvalError(f"--task {task!r}: not a single lm-eval task (`caa-eval tasks` lists caa-eval's)")
    task_obj = get_task_dict([task], manager)[task]
    if task_obj.OUTPUT_TYPE not in ("loglikelihood", "multiple_choice"):
        raise CAAEvalError(
            f"--task {task}: parity compares log-likelihoods; this task's output is {task_obj.OUTPUT_TYPE}"
        )
    task_obj.build_all_requests(
        limit=limit, rank=0, world_size=1, apply_chat_template=True, chat_template=lm.apply_chat_template,
        tokenizer_name=lm.tokenizer_name,
    )  # fmt: skip
    instances = sorted(task_obj.instances, key=lambda inst: (inst.doc_id, inst.idx))
    if not instances:
        raise CAAEvalError(f"--task {task}: no items (check --limit)")
    return instances, task_obj


def _run_backend(
    name: str,
    hf: Any,
    vector: SteeringVector,
    multiplier: float,
    instances: list[Any],
    tmp: Path,
    model_gguf: Path | None,
) -> tuple[list[tuple[float, bool]], str]:
    """One backend's (log-likelihood, greedy) per instance and the vector file it used."""
    from caa_eval.core.formats import convert

    if name == "steered-hf":
        return hf.loglikelihood(instances, disable_tqdm=True), "caa-eval SteeringVector (in memory)"
    if name == "lm-eval-steered":
        from lm_eval.models.hf_steered import SteeredModel

        (path,), _ = convert(vector, "lm-eval", tmp / "vector.pt", multiplier=multiplier)
        steered = SteeredModel(
            pretrained=hf.model, steer_path=str(path), tokenizer=hf.tokenizer, batch_size=hf.batch_size
        )
        return steered.loglikelihood(instances, disable_tqdm=True), "lm-eval .pt (caa-eval convert --to lm-eval)"
    from caa_eval.lmeval.llamacpp import LlamaCppScorer

    assert model_gguf is not None
    (path,), _ = convert(vector, "gguf", tmp / "vector.gguf", multiplier=multiplier)
    pairs = [hf._encode_pair(*inst.args) for inst in instances]
    scorer = LlamaCppScorer(model_gguf, path, n_ctx=_round_up(max(len(c) + len(x) for c, x in pairs) + 1))
    return scorer.loglikelihood(pairs), f"control-vector GGUF (caa-eval convert --to gguf) on {model_gguf.name}"


def _round_up(n: int, step: int = 64) -> int:
    return -(-n // step) * step


def _items(instances: list[Any], task_obj: Any, lls: dict[str, list[tuple[float, bool]]]) -> list[ParityItem]:
    """Group the instances per doc and score each backend's results with the task's process_results."""
    by_doc: dict[int, list[int]] = defaultdict(list)
    for i, inst in enumerate(instances):
        by_doc[inst.doc_id].append(i)
    items = []
    for doc_id, rows in by_doc.items():
        doc = instances[rows[0]].doc
        item = ParityItem(doc_id, [str(instances[i].args[1]) for i in rows])
        for name, results in lls.items():
            item.loglikelihoods[name] = [float(results[i][0]) for i in rows]
            metrics = task_obj.process_results(doc, [results[i] for i in rows])
            item.metrics[name] = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        items.append(item)
    return items
