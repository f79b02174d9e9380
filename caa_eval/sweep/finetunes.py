"""Finetune conditions: `{name: pos, finetune: {direction: pos, ...}}` makes the paper's Table 4 one sweep.

A finetune condition's model is the sweep's model plus a LoRA adapter trained on the behaviour's own
generate set (`caa_eval.finetune`), so it differs per behaviour: the adapter of condition C for behaviour B
lives in RUN_DIR/finetunes/C/B/ and is trained once, before the cells. The adapter folder appears only when
complete (written beside it, then renamed), so a killed sweep retrains only an adapter it was in the middle
of, and a rerun reuses finished ones. An adapter made with other settings than the config now asks for is
refused, never silently reused.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caa_eval.errors import CAAEvalError
from caa_eval.sweep.entries import Behaviour, Condition
from caa_eval.vocab import FINETUNE_DIR

if TYPE_CHECKING:
    from caa_eval.sweep.config import SweepConfig

__all__ = ["FINETUNE_DIR", "adapter_dir", "cell_condition", "pending_finetunes", "train_finetunes"]

log = logging.getLogger(__name__)


def adapter_dir(cfg: SweepConfig, condition: str, behaviour: str) -> Path:
    """RUN_DIR/finetunes/<condition>/<behaviour>: the adapter of one finetune condition and behaviour."""
    return cfg.output / FINETUNE_DIR / condition / behaviour


def cell_condition(cfg: SweepConfig, cond: Condition, behaviour: str | None) -> Condition:
    """The condition a cell runs under: a finetune condition gets its behaviour's adapter as `peft`, a pos/neg
    system prompt its behaviour's text.

    Args:
        cfg: the sweep config.
        cond: the cell's condition as configured.
        behaviour: the cell's behaviour (every cell of a finetune condition has one).
    """
    if behaviour is not None:
        cond = cond.for_behaviour(behaviour)  # a pos/neg system prompt: this behaviour's text
    if not getattr(cond, "finetune", None):
        return cond
    if behaviour is None:
        raise CAAEvalError(f"condition {cond.name}: a finetune condition needs a behaviour for every cell")
    return dataclasses.replace(cond, peft=str(adapter_dir(cfg, cond.name, behaviour)))


def _plan(cfg: SweepConfig) -> list[tuple[Condition, Behaviour]]:
    return [(c, b) for c in cfg.conditions if getattr(c, "finetune", None) for b in cfg.behaviours]


def _pairs(cfg: SweepConfig, b: Behaviour) -> Path:
    from caa_eval import data

    return b.pairs if b.pairs is not None else data.resolve_behaviour_pairs(b.name, "generate", cfg.caa_data_dir)


def _check_existing(cfg: SweepConfig, cond: Condition, b: Behaviour, folder: Path) -> None:
    """A finished adapter must be the one this config asks for (model, data, every setting)."""
    from caa_eval import data
    from caa_eval.finetune.adapter import read_info
    from caa_eval.finetune.recipe import FinetuneConfig

    info = read_info(folder) or {}
    wanted = {
        "model": cfg.model,
        "behaviour": b.name,
        "data_sha256": data.file_sha256(_pairs(cfg, b)),
        "hyperparameters": FinetuneConfig.from_mapping(cond.finetune or {}).as_dict(),
    }
    changed = sorted(k for k, v in wanted.items() if info.get(k) != v)
    if changed:
        raise CAAEvalError(
            f"{folder} was trained with a different {', '.join(changed)}; use a new output folder "
            "(--out), or delete that adapter folder to retrain it"
        )


def pending_finetunes(cfg: SweepConfig) -> list[tuple[Condition, Behaviour]]:
    """(condition, behaviour) adapters still to train; finished ones are checked against the config.

    Args:
        cfg: the sweep config.
    """
    from caa_eval.finetune.adapter import is_complete

    todo = []
    for cond, b in _plan(cfg):
        folder = adapter_dir(cfg, cond.name, b.name)
        if is_complete(folder):
            _check_existing(cfg, cond, b, folder)
        else:
            todo.append((cond, b))
    return todo


def train_finetunes(
    cfg: SweepConfig,
    todo: list[tuple[Condition, Behaviour]],
    device: str,
    progress: bool = True,
    print_fn: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Train the adapters `pending_finetunes` listed (one model load each; nothing else should be in memory).

    Returns:
        `condition/behaviour` -> the adapter's record (without the per-step losses), for the manifest.

    Args:
        cfg: the sweep config.
        todo: `pending_finetunes(cfg)`.
        device: torch device to train on.
        progress: show the training progress bar.
        print_fn: where the one-line summaries go.
    """
    from caa_eval.finetune.measure import p_match_line, shift_warning, target_line
    from caa_eval.finetune.recipe import FinetuneConfig
    from caa_eval.finetune.train import finetune_to_dir

    done = {}
    for cond, b in todo:
        folder = adapter_dir(cfg, cond.name, b.name)
        folder.parent.mkdir(parents=True, exist_ok=True)
        info = finetune_to_dir(
            cfg.model,
            folder,
            FinetuneConfig.from_mapping(cond.finetune or {}, f"condition {cond.name}"),
            behaviour=b.name,
            data_path=b.pairs,
            data_dir=cfg.caa_data_dir,
            device=device,
            dtype=cfg.dtype or "auto",
            overwrite=True,
            progress=progress,
            held_out=[b.ab_test] if b.ab_test is not None else [],
        )
        print_fn(
            f"finetuned {cond.name}/{b.name} ({info['direction']}): {info['steps']} steps, loss "
            f"{info['first_loss']:.4f} -> {info['final_loss']:.4f} in {info['train_seconds']:.0f} s -> {folder}"
        )
        print_fn(f"  {p_match_line(info)}")  # the same measurement as `caa-eval finetune`
        for line in filter(None, [target_line(info), shift_warning(info)]):
            print_fn(f"  {line}")
        kept = {k: v for k, v in info.items() if k not in ("loss_history", "p_match_curve")}
        done[f"{cond.name}/{b.name}"] = kept | {"folder": str(folder)}
        gc.collect()
    return done
