"""A LoRA finetune's recipe: its hyper-parameters and how long it trains, recorded beside the adapter.

Defaults: r=8, alpha=2r, all linear layers, AdamW lr 1e-3, batch 4, 20 % of the pairs held out to measure
p(match) on items never trained on, and whole epochs until at least `MIN_STEPS` steps (capped by `max_steps`):
about 100-200 steps on CAA's 290-1000-pair generate sets, minutes on CPU for the embedded 135M model. With
`target_shift`, training stops once held-out p(match) moved that far (checked every `eval_every` steps).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from caa_eval.errors import CAAEvalError
from caa_eval.finetune.examples import DIRECTIONS

__all__ = ["MIN_STEPS", "FinetuneConfig"]


MIN_STEPS = 100
"""Default length: whole epochs up to at least this many steps (one epoch when that is already longer)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of one LoRA finetune (all recorded beside the adapter)."""

    direction: str = "pos"
    epochs: int | None = None  # None: whole epochs reaching MIN_STEPS steps (at least 1), capped by max_steps
    lr: float = 1e-3
    lora_r: int = 8
    lora_alpha: float | None = None  # None: 2 * lora_r
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    batch_size: int = 4
    max_steps: int = 300
    seed: int = 0
    weight_decay: float = 0.0
    gradient_checkpointing: bool = False
    holdout_fraction: float = 0.2
    target_shift: float | None = None
    eval_every: int = 10

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise CAAEvalError(
                f"direction {self.direction!r} not understood; write pos (toward the behaviour) or neg (away)"
            )
        for name in ("lora_r", "batch_size", "max_steps", "eval_every") + (
            ("epochs",) if self.epochs is not None else ()
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise CAAEvalError(f"finetune {name}={getattr(self, name)!r}: use a whole number >= 1")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise CAAEvalError(f"finetune lr={self.lr!r}: use a learning rate such as 1e-3")
        if not 0 <= self.lora_dropout < 1:
            raise CAAEvalError(f"finetune lora_dropout={self.lora_dropout!r}: use a value in [0, 1)")
        if not (isinstance(self.holdout_fraction, (int, float)) and 0 < self.holdout_fraction < 1):
            raise CAAEvalError(
                f"finetune holdout_fraction={self.holdout_fraction!r}: use a share in (0, 1) such as 0.2"
            )
        if self.target_shift is not None and not (
            isinstance(self.target_shift, (int, float)) and 0 < self.target_shift < 1
        ):
            raise CAAEvalError(
                f"finetune target_shift={self.target_shift!r}: use a p(match) shift in (0, 1) such as 0.2"
            )

    def planned_steps(self, n_examples: int) -> int:
        """Steps to train on `n_examples` items: max_steps with a target, else whole epochs (see `MIN_STEPS`).

        Args:
            n_examples: training items (the held-out slice excluded).
        """
        per_epoch = math.ceil(n_examples / self.batch_size)
        if self.target_shift is not None:
            return self.max_steps
        epochs = self.epochs or max(1, math.ceil(MIN_STEPS / per_epoch))
        return min(epochs * per_epoch, self.max_steps)

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "finetune") -> FinetuneConfig:
        """Build from a mapping (sweep YAML, CLI), naming unknown keys in the error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CAAEvalError(f"{source}: unknown finetune setting(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lora_alpha"] = self.alpha
        return out

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_r)
