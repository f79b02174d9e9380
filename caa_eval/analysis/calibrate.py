"""The scale of a multiplier (§9.1): how big the added vector is and how much it moves the model.

A multiplier means nothing on its own: `+5` on a vector of norm 0.3 is a nudge, on a norm-10 vector it
wrecks the model. Two model-relative measures make multipliers comparable across vectors, layers, sites,
positions and models, both on a small shipped set of ordinary questions (`neutral_prompts.json`):

- norm fraction: |multiplier| × ‖vector‖ / mean ‖residual stream‖ at that layer (block output, every real
  token of the chat-templated prompts except the first, whose norm is an outlier in most models);
- KL: mean over the prompts of KL(steered ‖ unsteered) of the next-token distribution at the end of the
  prompt (where the answer starts), steering at the given site and positions (default CAA's
  `after_instruction`). A residual and an MLP-output intervention can thus be compared per unit of KL.

`calibrate` inverts the KL: the multiplier that reaches a target KL.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from caa_eval.core.positions import Positions
from caa_eval.core.scale import ScaleProbe, ScaleRow, neutral_prompts
from caa_eval.core.vectors import SteeringVector
from caa_eval.errors import CAAEvalError
from caa_eval.vocab import parse_site

__all__ = ["neutral_prompts", "ScaleProbe", "ScaleRow", "Calibration", "multiplier_scale", "calibrate"]


@dataclass
class Calibration:
    """The multiplier that reaches `target_kl` in one direction (`multiplier` None = not reached)."""

    layer: int
    target_kl: float
    direction: int
    multiplier: float | None
    kl: float | None
    norm_fraction: float | None
    max_multiplier: float
    evaluations: list[tuple[float, float]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _vector_and_site(vector: SteeringVector | torch.Tensor, layer: int, site: str | None) -> tuple[torch.Tensor, str]:
    if isinstance(vector, SteeringVector):
        vec = vector.select([layer])[layer]
        site = site or vector.site
    else:
        vec = vector.reshape(-1)
        site = site or "residual"
    return vec, parse_site(site)


def multiplier_scale(
    model: nn.Module,
    tokenizer: Any,
    vector: SteeringVector | torch.Tensor,
    layer: int,
    multipliers: Sequence[float],
    site: str | None = None,
    positions: str | Positions = "after_instruction",
    probe: ScaleProbe | None = None,
) -> list[ScaleRow]:
    """Each multiplier as a fraction of the mean residual-stream norm at `layer` and its next-token KL.

    This is the function reports call to state the scale of every multiplier, e.g.
    `rows = multiplier_scale(model, tok, caa_eval.core.vectors.load(path), 13, [-1, 1])`, then
    `row.norm_fraction` and `row.kl` (nats) per row. Pass one `ScaleProbe(model, tok)` as `probe` when
    calling it for several vectors or layers: the unsteered forward is then done once.

    Args:
        model: an HF causal LM (the one the vector is applied to).
        tokenizer: its tokenizer.
        vector: a loaded vector file (its vector at `layer` is used) or a 1-D tensor.
        layer: the steered block.
        multipliers: the multipliers to describe.
        site: where to add the vector (default: the file's site, `residual` for a tensor).
        positions: which tokens get the vector (default CAA's `after_instruction`).
        probe: a prepared ScaleProbe for this model (default: one on the shipped neutral prompts).
    """
    vec, site = _vector_and_site(vector, layer, site)
    probe = probe or ScaleProbe(model, tokenizer)
    return [probe.row(vec, layer, m, site, positions) for m in multipliers]


def calibrate(
    model: nn.Module,
    tokenizer: Any,
    vector: SteeringVector | torch.Tensor,
    layer: int,
    target_kl: float,
    direction: int = 1,
    site: str | None = None,
    positions: str | Positions = "after_instruction",
    tolerance: float = 0.02,
    max_multiplier: float = 1000.0,
    probe: ScaleProbe | None = None,
) -> Calibration:
    """The multiplier (sign = `direction`) whose mean next-token KL on the neutral prompts is `target_kl`.

    The multiplier is doubled from a small start until the KL passes the target, then the bracket is
    narrowed (bisection in log-multiplier, then secant steps on log KL) until the KL is within
    `tolerance` × target. KL usually grows monotonically with |multiplier| near 0; if it does not, the
    first crossing found is returned.

    Args:
        model, tokenizer: the steered model.
        vector: vector file or 1-D tensor.
        layer: the steered block.
        target_kl: wanted KL in nats (e.g. 0.1).
        direction: +1 (behaviour-increasing) or -1.
        site, positions: as in `multiplier_scale`.
        tolerance: relative tolerance on the KL.
        max_multiplier: give up (multiplier None) beyond this |multiplier|.
        probe: a prepared ScaleProbe.
    """
    if not target_kl > 0 or not math.isfinite(target_kl):
        raise CAAEvalError(f"--kl {target_kl}: give a positive target KL in nats, e.g. --kl 0.1")
    if direction not in (1, -1):
        raise CAAEvalError(f"direction {direction}: use +1 or -1")
    vec, site = _vector_and_site(vector, layer, site)
    probe = probe or ScaleProbe(model, tokenizer)
    vnorm = float(vec.float().norm())
    if not vnorm > 0:
        raise CAAEvalError(f"the vector at layer {layer} has norm 0; it cannot move the model")
    seen: list[tuple[float, float]] = []

    def kl_at(m: float) -> float:
        value = probe.kl(vec, layer, direction * m, site, positions)[0]
        seen.append((direction * m, value))
        return value

    m, kl = _find_crossing(kl_at, target_kl, tolerance, max_multiplier, 0.01 * probe.resid_norm(layer) / vnorm)
    frac = None if m is None else m * vnorm / probe.resid_norm(layer)
    return Calibration(
        layer, target_kl, direction, None if m is None else direction * m, kl, frac, max_multiplier, sorted(seen)
    )


def _find_crossing(
    kl_at: Callable[[float], float], target_kl: float, tolerance: float, max_multiplier: float, start: float
) -> tuple[float | None, float | None]:
    """(|multiplier|, KL) within `tolerance` of the target: doubling from `start`, then bisection / secant steps
    on (log m, log KL); (None, None) when even `max_multiplier` stays below the target."""
    lo, kl_lo = 0.0, 0.0
    hi = min(start, max_multiplier)  # 1% of the residual norm
    kl_hi = kl_at(hi)
    while kl_hi < target_kl:
        if hi >= max_multiplier:
            return None, None
        lo, kl_lo = hi, kl_hi
        hi = min(2 * hi, max_multiplier)
        kl_hi = kl_at(hi)
    for step in range(60):
        if abs(kl_hi - target_kl) <= tolerance * target_kl:
            return hi, kl_hi
        if abs(kl_lo - target_kl) <= tolerance * target_kl and lo > 0:
            return lo, kl_lo
        if lo > 0 and kl_lo > 0 and step % 2:  # secant on (log m, log KL): KL ~ c·m^p near a smooth crossing
            p = math.log(kl_hi / kl_lo) / math.log(hi / lo)
            mid = lo * math.exp(math.log(target_kl / kl_lo) / p) if p > 0 else math.sqrt(lo * hi)
            if not lo < mid < hi:
                mid = math.sqrt(lo * hi)
        else:
            mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
        kl_mid = kl_at(mid)
        if kl_mid < target_kl:
            lo, kl_lo = mid, kl_mid
        else:
            hi, kl_hi = mid, kl_mid
    raise CAAEvalError(
        f"calibration did not converge to KL {target_kl} within {tolerance:.0%}; "
        "the KL is not smooth in the multiplier here: try a larger --tolerance"
    )
