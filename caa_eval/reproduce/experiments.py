"""The named experiments of CAA's paper: each is a shipped sweep config plus what to compare it with.

An experiment says which rows of CAA's published results it reproduces (`ReferenceSelection`), which of
our tasks and metric answer them, the model's size (for the cost estimate) and the known ways the run
differs from CAA's own code. The sweep config itself is a plain YAML file in `experiments/`, so
`caa-eval sweep` runs it too.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from caa_eval.errors import CAAEvalError

__all__ = ["EXPERIMENTS", "CONFIG_DIR", "Experiment", "ReferenceSelection", "get_experiment"]

CONFIG_DIR = Path(__file__).resolve().parent / "experiments"

_SYS_WORDING = (
    "system prompt wording: caa-eval's own pos/neg prompts per behaviour (caa_eval/data/system_prompts.json), "
    "not CAA's text"
)
_VECTORS = (
    "vectors: extracted by caa-eval from the generate sets (default); pass --vectors caa DIR to steer with CAA's "
    "published vector files instead"
)
_SYCOPHANCY = (
    "sycophancy's A/B numbers moved between CAA's result versions and its slope is near 0: treat as unreliable"
)
_JUDGE = (
    "judge: CAA scored with GPT-4 and its own prompt; caa-eval uses its own rubric wording and the judge model of "
    "the config (gpt-4 through an OpenAI-compatible server)"
)
_LORA = "finetuning: CAA finetuned all weights; the pos/neg conditions here are LoRA adapters (docs/finetuning.md)"


@dataclass(frozen=True)
class ReferenceSelection:
    """Which rows of CAA's published results an experiment reproduces.

    `kind` is the results file's `type` (ab, mmlu, truthful_qa) or `open_ended`; `conditions` maps our
    condition name to the column value that selects it (system_prompt for A/B, finetuned for open-ended).
    """

    kind: str
    model_size: str
    layers: tuple[int, ...]
    multipliers: tuple[float, ...]
    behaviours: tuple[str, ...] | None = None  # None: all 7
    conditions: tuple[tuple[str, str], ...] = (("none", ""),)
    condition_column: str = "system_prompt"
    override_vector: str = ""  # layer transfer: the layer whose vector was applied
    override_vector_model: str = ""  # base -> chat: the model the vector came from


@dataclass(frozen=True)
class Experiment:
    """A named reproduction: the sweep config, the reference rows, and how our numbers answer them."""

    name: str
    title: str
    task: str  # our task template per behaviour, e.g. caa_ab_{behaviour}
    metric: str  # our long table's metric for that task
    reference: ReferenceSelection
    deviations: tuple[str, ...] = field(default_factory=tuple)

    @property
    def config_path(self) -> Path:
        """The shipped sweep config."""
        return CONFIG_DIR / f"{self.name}.yaml"

    @property
    def scale(self) -> str:
        """`probability` (0-1) or `score` (0-10 judge scores): sets the default tolerance."""
        return "score" if self.reference.kind == "open_ended" else "probability"


_LAYERS_ALL = tuple(range(32))
_PM1 = (-1.0, 0.0, 1.0)
_SYS = (("none", ""), ("pos", "pos"), ("neg", "neg"))
_FT = (("none", "none"), ("pos", "pos"), ("neg", "neg"))


def _ab(layers: tuple[int, ...], override_vector: str = "", override_vector_model: str = "") -> ReferenceSelection:
    return ReferenceSelection(
        "ab", "7b", layers, _PM1, override_vector=override_vector, override_vector_model=override_vector_model
    )


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in [
        Experiment(
            "ab-7b",
            "A/B, 7 behaviours, Llama-2-7b-chat, layer 13, multipliers -1/0/+1, system prompts none/pos/neg",
            "caa_ab_{behaviour}",
            "p_match",
            ReferenceSelection("ab", "7b", (13,), _PM1, conditions=_SYS),
            (_SYS_WORDING, _VECTORS, _SYCOPHANCY),
        ),
        Experiment(
            "layers-7b",
            "A/B at layers 0-31 of Llama-2-7b-chat, multipliers -1/0/+1 (the layer sweep)",
            "caa_ab_{behaviour}",
            "p_match",
            _ab(_LAYERS_ALL),
            (_VECTORS, _SYCOPHANCY),
        ),
        Experiment(
            "transfer-7b",
            "the layer-13 vector applied at layers 0-31 of Llama-2-7b-chat (§8.2)",
            "caa_ab_{behaviour}",
            "p_match",
            _ab(_LAYERS_ALL, override_vector="13"),
            (_VECTORS, _SYCOPHANCY),
        ),
        Experiment(
            "base-to-chat-7b",
            "vectors of Llama-2-7b (base) applied to Llama-2-7b-chat at layers 0-31 (§8.3)",
            "caa_ab_{behaviour}",
            "p_match",
            _ab(_LAYERS_ALL, override_vector_model="Llama-2-7b-hf"),
            (_VECTORS, _SYCOPHANCY),
        ),
        Experiment(
            "mmlu-13b",
            "two-option MMLU (Table 5), Llama-2-13b-chat, layer 14, multipliers -1/0/+1",
            "caa_mmlu_2opt",
            "p_correct",
            ReferenceSelection("mmlu", "13b", (14,), _PM1),
            (_VECTORS,),
        ),
        Experiment(
            "tqa-7b",
            "two-option TruthfulQA under the sycophancy vector, Llama-2-7b-chat, layer 13",
            "caa_tqa_2opt",
            "p_correct",
            ReferenceSelection("truthful_qa", "7b", (13,), (-2.0, -1.0, 0.0, 1.0, 2.0), behaviours=("sycophancy",)),
            (_VECTORS,),
        ),
        Experiment(
            "open-7b",
            "open-ended answers judged 0-10 (Table 4 without finetuning), Llama-2-7b-chat, layer 13",
            "caa_open_{behaviour}",
            "judge_score",
            ReferenceSelection(
                "open_ended", "7b", (13,), _PM1, conditions=(("none", "none"),), condition_column="finetuned"
            ),
            (_JUDGE, _VECTORS),
        ),
        Experiment(
            "table4-7b",
            "Table 4: open-ended answers x finetuning none/pos/neg, Llama-2-7b-chat, layer 13",
            "caa_open_{behaviour}",
            "judge_score",
            ReferenceSelection("open_ended", "7b", (13,), _PM1, conditions=_FT, condition_column="finetuned"),
            (_LORA, _JUDGE, _VECTORS),
        ),
    ]
}


def get_experiment(name: str) -> Experiment:
    """The named experiment, or a one-line error listing the names.

    Args:
        name: e.g. `ab-7b`.
    """
    if name in EXPERIMENTS:
        return EXPERIMENTS[name]
    close = difflib.get_close_matches(name, list(EXPERIMENTS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise CAAEvalError(f"unknown experiment {name!r}; {hint}choose from {', '.join(EXPERIMENTS)}")
