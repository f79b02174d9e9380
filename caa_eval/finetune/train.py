"""LoRA supervised finetuning toward (`pos`) or away from (`neg`) a behaviour, as in CAA's Table 4.

CAA finetuned all of Llama-2-7b-chat (SGD, lr 1e-4, 1 epoch, batch 1 per GPU) on the behaviour's generate
set, with the loss on the answer letter after `… [/INST] (`. Here a LoRA adapter is trained on the same
items in the A/B task's own prompt format (loss on the letter and `)`), which fits on one GPU for 7B and on
CPU for the embedded model, and leaves the base weights - and so the base model's steering vectors - intact.

The recipe (hyper-parameters and how long to train) is `caa_eval.finetune.recipe.FinetuneConfig`.
"""

from __future__ import annotations

import inspect
import logging
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from caa_eval import __version__
from caa_eval.data import ContrastPair
from caa_eval.errors import CAAEvalError
from caa_eval.finetune.adapter import base_fingerprint, is_complete, write_info
from caa_eval.finetune.examples import (
    IGNORE,
    LOSS_TOKENS,
    TrainingData,
    TrainingExample,
    build_examples,
    split_holdout,
    training_data,
)
from caa_eval.finetune.measure import p_match, scoring_set, shift_toward
from caa_eval.finetune.recipe import FinetuneConfig

__all__ = ["FinetuneResult", "answer_loss", "train_lora", "finetune_to_dir"]

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """The trained peft model and its per-step training losses."""

    model: Any  # a peft PeftModel
    losses: list[float]
    steps: int
    seconds: float
    target_reached: bool = False

    @property
    def final_loss(self) -> float:
        """Mean loss over the last quarter of the steps, at most 10 (one step's loss is one batch: too noisy to
        report alone; a longer tail would mix in the early, untrained steps of a short run)."""
        tail = self.losses[-max(1, min(10, len(self.losses) // 4)) :]
        return float(sum(tail) / len(tail))


def _batches(examples: Sequence[TrainingExample], cfg: FinetuneConfig) -> list[list[TrainingExample]]:
    """`cfg.planned_steps` batches: seeded shuffles, epoch after epoch."""
    steps = cfg.planned_steps(len(examples))
    rng = random.Random(cfg.seed)
    out: list[list[TrainingExample]] = []
    while len(out) < steps:
        order = list(range(len(examples)))
        rng.shuffle(order)
        out.extend([examples[i] for i in order[k : k + cfg.batch_size]] for k in range(0, len(order), cfg.batch_size))
    return out[:steps]


def _collate(batch: list[TrainingExample], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(ex.input_ids) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):  # right padding: real tokens keep positions 0..n-1
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], keep_logits: bool = True) -> torch.Tensor:
    """Mean cross-entropy over the labelled (answer) tokens of a right-padded batch.

    Only the logits that predict answer tokens are computed (`logits_to_keep`): the LM head over every
    position would cost ~20% of a step for a small model with a large vocabulary, for nothing.

    Args:
        model: a causal LM (peft-wrapped or not).
        batch: `input_ids`, `attention_mask`, `labels` (IGNORE outside the answer).
        keep_logits: the model's forward accepts `logits_to_keep` (transformers >= 4.45 for most models).
    """
    target = batch["labels"][:, 1:]  # the logits at position t predict token t + 1
    rows, cols = (target != IGNORE).nonzero(as_tuple=True)
    if keep_logits:
        keep = torch.unique(cols)  # sorted positions needed by any row of the batch
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
        picked = logits[rows, torch.searchsorted(keep, cols)]
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        picked = logits[rows, cols]
    return torch.nn.functional.cross_entropy(picked.float(), target[rows, cols])


WARMUP_STEPS = 10
"""Linear warm-up of the learning rate over the first steps (at most a tenth of the run)."""

Check = Callable[[int, torch.nn.Module], bool]
"""`check(step, model) -> stop?`: called every `eval_every` steps during training."""


def _wrap_lora(model: torch.nn.Module, cfg: FinetuneConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft annotates int, accepts float
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()  # type: ignore[operator]
        model.enable_input_require_grads()  # type: ignore[operator]
    return get_peft_model(model, lora)


def train_lora(
    model: Any,  # an HF causal LM
    tokenizer: Any,
    examples: Sequence[TrainingExample],
    cfg: FinetuneConfig,
    progress: bool = True,
    check: Check | None = None,
) -> FinetuneResult:
    """Wrap `model` with a fresh LoRA adapter and train it on `examples` (loss on their labelled tokens).

    Args:
        model: the base HF causal LM (modified in place by peft: use the returned model).
        tokenizer: its tokenizer (for the pad id).
        examples: from `build_examples`.
        cfg: hyper-parameters.
        progress: show a tqdm bar with the running loss.
        check: called every `cfg.eval_every` steps; training stops when it returns True (target reached).
    """
    if not examples:
        raise CAAEvalError("no training examples")
    torch.manual_seed(cfg.seed)
    peft_model = _wrap_lora(model, cfg)
    optimizer = torch.optim.AdamW(
        [p for p in peft_model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    batches = _batches(examples, cfg)
    warm = max(1, min(WARMUP_STEPS, len(batches) // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
    device = next(peft_model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    losses: list[float] = []
    reached = False
    start = time.monotonic()
    peft_model.train()
    bar = tqdm(batches, desc=f"finetune {cfg.direction}", unit="step", disable=not progress)
    for step, batch in enumerate(bar, 1):
        loss = answer_loss(peft_model, _collate(batch, pad_id, device), keep_logits)
        if not torch.isfinite(loss):
            raise CAAEvalError(f"training loss became {float(loss)} at step {step}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
        if check is not None and step % cfg.eval_every == 0 and check(step, peft_model):
            reached = True
            break
    bar.close()
    peft_model.eval()
    return FinetuneResult(peft_model, losses, len(losses), time.monotonic() - start, reached)


def _device_and_dtype(device: str, dtype: str) -> tuple[str, str]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    return device, dtype


def _train_measured(
    model: torch.nn.Module,
    tokenizer: Any,
    split: tuple[list[ContrastPair], list[ContrastPair]],
    cfg: FinetuneConfig,
    progress: bool,
) -> tuple[FinetuneResult, dict[str, Any]]:
    """Score p(match) on the training pairs and the held-out slice, train (to the target), score again."""
    fit, heldout = split
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sets = {"train": scoring_set(tokenizer, fit), "heldout": scoring_set(tokenizer, heldout)}
    log.info("scoring p(match) on %d training and %d held-out pairs before training", len(fit), len(heldout))
    before = {name: p_match(model, s, pad_id) for name, s in sets.items()}
    curve = [{"step": 0, "heldout": before["heldout"]}]

    def check(step: int, peft_model: torch.nn.Module) -> bool:
        curve.append({"step": step, "heldout": p_match(peft_model, sets["heldout"], pad_id)})
        return shift_toward(cfg.direction, before["heldout"], curve[-1]["heldout"]) >= (cfg.target_shift or 0)

    examples = build_examples(tokenizer, fit, cfg.direction)
    result = train_lora(model, tokenizer, examples, cfg, progress, check if cfg.target_shift is not None else None)
    after = {"train": p_match(result.model, sets["train"], pad_id)}
    last = curve[-1]
    after["heldout"] = (
        last["heldout"] if last["step"] == result.steps else p_match(result.model, sets["heldout"], pad_id)
    )
    facts: dict[str, Any] = {
        "n_examples": len(examples),
        "n_heldout": len(heldout),
        "p_match_before": before,
        "p_match_after": after,
        "heldout_shift": shift_toward(cfg.direction, before["heldout"], after["heldout"]),
    }
    if cfg.target_shift is not None:
        facts |= {"target_reached": result.target_reached, "p_match_curve": curve}
    return result, facts


def _record(model_name: str, fingerprint: str, train: TrainingData, cfg: FinetuneConfig) -> dict[str, Any]:
    import peft

    return {
        "model": model_name,
        "model_fingerprint": fingerprint,
        "behaviour": train.behaviour,
        "direction": cfg.direction,
        "data_file": str(train.path),
        "data_sha256": train.sha256,
        "loss_tokens": LOSS_TOKENS,
        "hyperparameters": cfg.as_dict(),
        "caa_eval_version": __version__,
        "peft_version": peft.__version__,
        "torch_version": torch.__version__,
    }


def _save(model: torch.nn.Module, info: dict[str, Any], out: Path) -> None:
    """Write the adapter beside `out` and rename it when complete: a killed run leaves no finished-looking folder."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))  # type: ignore[operator]
    write_info(tmp, info)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def _check_out(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        what = "an adapter" if is_complete(out) else "files"
        raise CAAEvalError(f"--out {out} already holds {what}; choose a new folder or pass --overwrite")
    return out


def finetune_to_dir(
    model_name: str,
    out: str | Path,
    cfg: FinetuneConfig,
    behaviour: str | None = None,
    data_path: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    held_out: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Load the model, finetune on the behaviour's A/B generate pairs, save adapter + `caa_finetune.json`.

    A seeded slice of the pairs (`cfg.holdout_fraction`) is never trained on; p(match) on the training
    pairs and on that slice is measured before and after and recorded. Returns the recorded facts.

    Args:
        model_name: HF path/ID or `smollm2-135m-instruct`.
        out: adapter folder to create.
        cfg: hyper-parameters (direction, held-out fraction and target shift included).
        behaviour: CAA behaviour (its generate split), or the label for `data_path`.
        data_path: a contrast-pair file instead of CAA's generate split.
        data_dir: CAA data folder (default: `CAA_EVAL_DATA_DIR`, then the user cache).
        device: `auto` (cuda if available), `cpu`, `cuda`, `cuda:1`, ...
        dtype: `auto` (bfloat16 on GPU, float32 on CPU), `float32`, `bfloat16`, `float16`.
        overwrite: replace an existing adapter folder.
        progress: show a progress bar.
        held_out: more A/B test files the training pairs must not overlap.
    """
    from caa_eval.models import load_model

    out = _check_out(out, overwrite)
    train = training_data(behaviour, data_path, data_dir, held_out)
    fit_items, heldout_items = split_holdout(train.pairs, cfg.holdout_fraction, cfg.seed)
    split = [train.pairs[i] for i in fit_items], [train.pairs[i] for i in heldout_items]
    device, dtype = _device_and_dtype(device, dtype)
    model, tokenizer = load_model(model_name, dtype=dtype)
    model.to(device)
    info = _record(model_name, base_fingerprint(model), train, cfg) | {"heldout_items": heldout_items}
    log.info(
        "finetuning %s %s on %d of %d %s pairs (%s), %d held out, up to %d step(s)",
        *(model_name, cfg.direction, len(split[0]), len(train.pairs), train.behaviour, train.path, len(split[1])),
        cfg.planned_steps(len(split[0])),
    )
    result, facts = _train_measured(model, tokenizer, split, cfg, progress)
    info |= facts | {
        "steps": result.steps,
        "first_loss": result.losses[0],
        "final_loss": result.final_loss,
        "loss_history": [round(x, 6) for x in result.losses],
        "train_seconds": round(result.seconds, 1),
        "device": device,
        "dtype": dtype,
    }
    _save(result.model, info, out)
    return info
