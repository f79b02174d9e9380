"""Which layer, before sweeping: two cheap per-layer diagnostics of the contrast pairs, recorded at extraction.

- consistency: mean over pairs of cos(d_i, d̄), d_i = matching − non-matching activation of pair i and d̄ their
  mean (the CAA vector). 1 = every pair points the same way; near 0 = the mean is an average of noise.
- AUROC: how well the projection on d̄ separates matching from non-matching activations: the share of
  (matching, non-matching) activation pairs, over all of them, in which the matching one projects higher
  (Mann-Whitney U / (n1 n2)); 0.5 = no separation.

A layer sweep's report correlates both with the per-layer steerability (docs/statistics.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scipy import stats as sps

if TYPE_CHECKING:  # torch only where activations are (a report reads DIAGNOSTICS_KEY without it)
    import torch

__all__ = ["DIAGNOSTICS_KEY", "layer_diagnostics"]

DIAGNOSTICS_KEY = "layer_diagnostics"  # in a vector file's metadata `extra`: {layer: {consistency, auroc}}


def layer_diagnostics(pos: torch.Tensor, neg: torch.Tensor) -> dict[str, float]:
    """Consistency and AUROC of one layer from the pairs' activations.

    Args:
        pos: (pairs, hidden) activations with the matching answer.
        neg: (pairs, hidden) activations with the non-matching answer, same order.
    """
    from torch.nn.functional import cosine_similarity

    diffs = (pos - neg).double()
    mean = diffs.mean(0)
    cos = cosine_similarity(diffs, mean[None, :], dim=1)
    unit = mean / mean.norm().clamp_min(1e-30)
    on_pos = (pos.double() @ unit).numpy()
    on_neg = (neg.double() @ unit).numpy()
    u = sps.mannwhitneyu(on_pos, on_neg, alternative="two-sided").statistic
    return {"consistency": float(cos.mean()), "auroc": float(u / (on_pos.size * on_neg.size))}
