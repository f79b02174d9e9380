"""What a reproduction costs on one 80 GB GPU: forward passes, memory and time, from stated assumptions.

Assumptions (docs/gpu.md, "Expected wall time"; none of this was measured on a GPU):
- an A100-80GB, fp16 weights at 2 bytes per parameter, 312 TFLOP/s peak of which 40 % on batched prompt
  passes (2 FLOPs per parameter per token), 30 % on LoRA training (6 FLOPs per parameter per token);
- a finetune trains on the steps its recipe plans (`FinetuneConfig.planned_steps` on the training slice, one
  answer of ~115 tokens per item);
- greedy decoding at 35 ms (7B) / 45 ms (13B) per step of a batch of 16; model loads at 0.45 GB/s;
- tokens per item measured with the Llama-2 tokenizer on CAA's data in `[INST] ... [/INST]` form
  (`ITEM_TOKENS`); a judge call takes 3 s with 8 in flight.
- Every steered cell is counted as its own pass over its items (the sweep shares the unsteered prefix
  across multipliers, so this is an upper bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from caa_eval import vocab
from caa_eval.sweep import Cell, SweepConfig

__all__ = ["MODELS", "ITEMS", "ITEM_TOKENS", "GENERATE_PAIRS", "Estimate", "estimate", "estimate_lines"]

PEAK_FLOPS = 312e12
PROMPT_EFFICIENCY, TRAIN_EFFICIENCY = 0.40, 0.30
LOAD_GB_PER_S = 0.45
BATCH, MAX_SEQ, VOCAB = 16, 512, 32000
GEN_TOKENS = 100  # CAA: greedy, 100 new tokens
JUDGE_SECONDS, JUDGE_CONCURRENCY = 3.0, 8

# model -> (parameters in billions, layers, hidden size, ms per decoding step of a batch of 16)
MODELS: dict[str, tuple[float, int, int, float]] = {
    "meta-llama/Llama-2-7b-chat-hf": (6.74, 32, 4096, 35.0),
    "meta-llama/Llama-2-7b-hf": (6.74, 32, 4096, 35.0),
    "meta-llama/Llama-2-13b-chat-hf": (13.0, 40, 5120, 45.0),
}
# task family -> items per task (CAA's data); open-ended sycophancy has 53
ITEMS = {"caa_ab": 50, "caa_open": 50, "caa_mmlu_2opt": 570, "caa_tqa_2opt": 817}
ITEM_TOKENS = {"caa_ab": 101, "caa_open": 41, "caa_mmlu_2opt": 94, "caa_tqa_2opt": 68}  # prompt tokens per item
SUBTASKS = {"caa_mmlu_2opt": 57, "caa_tqa_2opt": 32}  # subjects / categories: lm-eval's limit is per subtask
PAIR_TOKENS = 230  # both answers of one contrast pair
GENERATE_PAIRS = {
    "coordinate-other-ais": 360,
    "corrigible-neutral-HHH": 290,
    "hallucination": 1000,
    "myopic-reward": 950,
    "survival-instinct": 903,
    "sycophancy": 1000,
    "refusal": 408,
}


def _family(task: str) -> str:
    return task if task in ITEMS else vocab.task_family(task)


def _items(task: str, limit: int | float | None) -> int:
    """Items the task scores; the behaviour is read from the task name (a shared baseline cell names none)."""
    fam = _family(task)
    n = 53 if fam == "caa_open" and vocab.behaviour_of_task(task) == "sycophancy" else ITEMS.get(fam, 50)
    if limit is None:
        return n
    if fam in SUBTASKS:  # the limit is per subject / category (at most this many items)
        per = n / SUBTASKS[fam]
        return min(n, SUBTASKS[fam] * math.ceil(limit * per if limit < 1 else limit))
    return min(n, math.ceil(n * limit) if limit < 1 else int(limit))


@dataclass
class Estimate:
    """Counts and seconds of one experiment on one GPU."""

    prompt_passes: int = 0
    prompt_tokens: int = 0
    extract_passes: int = 0
    extract_tokens: float = 0.0
    decode_steps: int = 0
    answers: int = 0
    finetunes: int = 0
    train_tokens: float = 0.0
    loads: int = 0
    seconds: dict[str, float] | None = None
    memory_gb: dict[str, float] | None = None


def _train_tokens(recipe: dict, behaviour: str) -> float:
    """Tokens one finetune trains on, by its own recipe: the steps it plans on the training slice (whole epochs
    up to `MIN_STEPS`, or `max_steps` with a target shift: an upper bound) × batch × one answer per item."""
    from caa_eval.finetune.recipe import FinetuneConfig

    config = FinetuneConfig.from_mapping(dict(recipe))
    n_train = GENERATE_PAIRS.get(behaviour, 0) - round(GENERATE_PAIRS.get(behaviour, 0) * config.holdout_fraction)
    if n_train < 1:
        return 0.0
    return config.planned_steps(n_train) * config.batch_size * PAIR_TOKENS / 2


def _count(cfg: SweepConfig, cells: list[Cell], extracting: bool, est: Estimate) -> None:
    for cell in cells:
        for task in cell.tasks:
            n = _items(task, cfg.limit)
            est.prompt_passes += n
            est.prompt_tokens += n * ITEM_TOKENS.get(_family(task), 100)
            if _family(task) == "caa_open":
                est.decode_steps += math.ceil(n / BATCH) * GEN_TOKENS
                est.answers += n
    if extracting:
        params = MODELS[cfg.model]
        deepest = max(max(g) for g in cfg.layers + ([[cfg.vector_layer]] if cfg.vector_layer is not None else []))
        for b in cfg.behaviours:
            pairs = GENERATE_PAIRS.get(b.name, 0)
            est.extract_passes += 2 * pairs
            est.extract_tokens += pairs * PAIR_TOKENS * (deepest + 1) / params[1]  # stops at the deepest layer
    ft = [c for c in cfg.conditions if c.finetune]
    est.finetunes = len(ft) * len(cfg.behaviours)
    est.train_tokens = sum(_train_tokens(c.finetune, b.name) for c in ft if c.finetune for b in cfg.behaviours)
    keys = {c.model_key(cfg.model) for c in cfg.conditions if not c.finetune}
    own = any(not (c.pretrained or c.peft or c.model_args) for c in cfg.conditions)
    est.loads = len(keys) + est.finetunes + (1 if extracting and not own else 0)  # + the model vectors come from


def estimate(cfg: SweepConfig, cells: list[Cell], extracting: bool = True) -> Estimate | None:
    """Forward passes, GPU memory and time; None for a model the estimate has no facts about.

    Args:
        cfg: the experiment's sweep config (after --limit and other overrides).
        cells: its planned cells.
        extracting: whether the vectors are extracted (False with --vectors caa DIR).
    """
    if cfg.model not in MODELS:
        return None
    params, layers, hidden, step_ms = MODELS[cfg.model]
    n = params * 1e9
    est = Estimate()
    _count(cfg, cells, extracting, est)
    prompt_rate = PROMPT_EFFICIENCY * PEAK_FLOPS / (2 * n)  # tokens per second
    weights = 2 * n / 1e9
    est.seconds = {
        "model loads": est.loads * weights / LOAD_GB_PER_S,
        "extraction": est.extract_tokens / prompt_rate,
        "scoring prompts": est.prompt_tokens / prompt_rate,
        "generation": est.decode_steps * step_ms / 1000,
        "finetuning (LoRA)": est.train_tokens * 6 * n / (TRAIN_EFFICIENCY * PEAK_FLOPS),
        "judge (API)": est.answers * JUDGE_SECONDS / JUDGE_CONCURRENCY,
    }
    est.memory_gb = {
        "weights (fp16)": weights,
        "KV cache": 2 * layers * hidden * 2 * BATCH * MAX_SEQ / 1e9,
        "logits (fp32)": BATCH * MAX_SEQ * VOCAB * 4 / 1e9,
    }
    return est


def estimate_lines(cfg: SweepConfig, cells: list[Cell], extracting: bool = True) -> list[str]:
    """The dry run's estimate block: counts, memory, time and the assumptions behind them.

    Args:
        cfg: the experiment's sweep config.
        cells: its planned cells.
        extracting: whether the vectors are extracted.
    """
    est = estimate(cfg, cells, extracting)
    if est is None or est.seconds is None or est.memory_gb is None:
        return [f"estimate: no GPU estimate for {cfg.model} (known: {', '.join(MODELS)})"]
    steered = sum(not c.is_baseline for c in cells)
    mem = sum(est.memory_gb.values())
    lines = [
        f"cells: {len(cells)} ({len(cells) - steered} baselines, {steered} steered); limit {cfg.limit}",
        f"forward passes: {est.prompt_passes:,} prompt passes ({est.prompt_tokens:,} tokens) for scoring"
        + (f", {est.decode_steps:,} decoding steps for {est.answers:,} answers" if est.answers else "")
        + (f", {est.extract_passes:,} extraction passes" if est.extract_passes else "")
        + (f", {est.finetunes} LoRA finetunes" if est.finetunes else ""),
        "GPU memory (one 80 GB GPU): "
        + " + ".join(f"{k} {v:.1f} GB" for k, v in est.memory_gb.items())
        + f" = {mem:.1f} GB peak for inference (batch {BATCH} x {MAX_SEQ} tokens)",
        f"time (one A100-80GB): about {sum(est.seconds.values()) / 60:.0f} min = "
        + " + ".join(f"{k} {v / 60:.1f}" for k, v in est.seconds.items() if v > 0)
        + " min",
        f"assumptions: fp16 weights at 2 bytes/param ({MODELS[cfg.model][0]}B params); prompt passes at "
        f"{PROMPT_EFFICIENCY:.0%} of 312 TFLOP/s = {PROMPT_EFFICIENCY * PEAK_FLOPS / (2 * MODELS[cfg.model][0] * 1e9):,.0f}"
        f" tokens/s; tokens per item from CAA's data with the Llama-2 tokenizer ({_tokens_text()}); "
        f"{MODELS[cfg.model][3]:.0f} ms per decoding step of {BATCH}; every steered cell its own pass (upper bound); "
        "docs/gpu.md",
    ]
    return lines


def _tokens_text() -> str:
    return ", ".join(f"{k} {v}" for k, v in ITEM_TOKENS.items()) + f", contrast pair {PAIR_TOKENS}"
