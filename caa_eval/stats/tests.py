"""The statistical tests and intervals, on plain arrays: bootstrap CIs, paired tests, MDE, Holm/BH.

Everything here is scipy/statsmodels; this module only chooses methods and handles the edge cases (tiny n,
all-zero differences, ties). Items may carry a subject (MMLU): then means are per-subject macro means, the
bootstrap resamples within subjects and the permutation test flips signs of the macro mean's terms.
"""

from __future__ import annotations

import functools
import math
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import stats as sps

__all__ = [
    "NOISE",
    "TESTS",
    "WILCOXON_EXACT_MAX_N",
    "PairedTests",
    "seeded_rng",
    "strata",
    "macro_mean",
    "mean_ci",
    "wilcoxon_method",
    "paired_tests",
    "mde_dz",
    "adjust_pvalues",
    "P_FLOOR",
    "floor_p",
]

NOISE = 1e-12  # differences and spreads below this are floating-point noise
TESTS = ("wilcoxon", "permutation")
WILCOXON_EXACT_MAX_N = 50  # exact signed-rank distribution up to here (untied, no zeros); scipy's own limit
P_FLOOR = float(np.finfo(float).tiny)  # ~2.2e-308: below this a normal-approximation p underflows to 0.0


def floor_p(p: float, name: str) -> tuple[float, str]:
    """A p-value that underflowed to 0.0 is not 0: report the floor with a note saying so.

    Why: a p of exactly 0 reads as "impossible under the null", and it breaks log scales and ratios downstream.

    Args:
        p: the p-value from scipy.
        name: the test's name for the note.
    """
    if p == 0.0:
        return P_FLOOR, f"{name} p below {P_FLOOR:.1e} (floating-point underflow): reported as {P_FLOOR:.1e}"
    return p, ""


def seeded_rng(seed: int, key: Sequence[Any]) -> np.random.Generator:
    """One generator per cell, derived from the seed and the cell's name: results do not depend on which
    other cells are in the table or in what order they are computed.

    Args:
        seed: the user's seed.
        key: the cell's key values.
    """
    return np.random.default_rng([int(seed), zlib.crc32("|".join(map(str, key)).encode())])


def strata(subjects: Sequence[str] | np.ndarray | None) -> list[np.ndarray] | None:
    """Index arrays of the items of each subject, or None when there are no subjects (plain item mean).

    Args:
        subjects: one label per item ("" or None everywhere = no subjects).
    """
    if subjects is None:
        return None
    labels = np.asarray(subjects, dtype=object)
    if labels.size == 0 or all(s in ("", None) for s in labels):
        return None
    _, inverse = np.unique(labels.astype(str), return_inverse=True)
    return [np.flatnonzero(inverse == k) for k in range(int(inverse.max()) + 1)]


def _weights(n: int, groups: list[np.ndarray] | None) -> np.ndarray:
    """Item weights of the macro mean: 1 / (number of subjects × size of the item's subject)."""
    w = np.full(n, 1.0 / n)
    if groups is not None:
        for idx in groups:
            w[idx] = 1.0 / (len(groups) * idx.size)
    return w


def macro_mean(x: np.ndarray, subjects: Sequence[str] | np.ndarray | None = None) -> float:
    """Mean per subject, then the unweighted mean over subjects (the plain mean without subjects).

    Args:
        x: scores, one per item (no NaN).
        subjects: one label per item, or None.
    """
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return math.nan
    groups = strata(subjects)
    return float(x.mean()) if groups is None else float(np.mean([x[idx].mean() for idx in groups]))


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def mean_ci(
    x: np.ndarray,
    rng: np.random.Generator,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    subjects: Sequence[str] | np.ndarray | None = None,
) -> tuple[float, float, str]:
    """Bootstrap CI (BCa, falling back to percentile) of the (macro) mean over items.

    Args:
        x: one value per item (no NaN).
        rng: the cell's generator.
        n_resamples: bootstrap resamples.
        confidence: the interval's coverage.
        subjects: one label per item: items are resampled within their subject (a stratified bootstrap) and
            the statistic is the macro mean; subjects with one item are held fixed.
    """
    x = np.asarray(x, dtype=float)
    if x.size < 2:
        return math.nan, math.nan, "n<2: no CI"
    if np.ptp(x) <= NOISE:
        return float(x.mean()), float(x.mean()), ""
    groups = strata(subjects)
    if groups is not None and max(idx.size for idx in groups) < 2:
        groups = None  # one item per subject: the macro mean is the item mean
    statistic: Callable[..., np.ndarray]
    if groups is None:
        samples: tuple[np.ndarray, ...] = (x,)
        statistic = _mean
    else:
        samples = tuple(x[idx] for idx in groups if idx.size >= 2)
        fixed, n_groups = float(sum(x[idx].sum() for idx in groups if idx.size < 2)), len(groups)

        def statistic(*parts: np.ndarray, axis: int = -1) -> np.ndarray:
            return (sum(p.mean(axis=axis) for p in parts) + fixed) / n_groups

    note = ""
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sps.bootstrap(
                samples,
                statistic,
                n_resamples=n_resamples,
                confidence_level=confidence,
                method=method,
                vectorized=True,
                rng=rng,
            )
        low, high = res.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return float(low), float(high), note
        note = "BCa degenerate: percentile CI"
    return math.nan, math.nan, "bootstrap failed"


class PairedTests(NamedTuple):
    """The two paired tests of one cell against its baseline."""

    p_wilcoxon: float
    p_permutation: float
    wilcoxon_method: str  # "exact", "asymptotic" (normal approximation with tie correction) or ""
    note: str


def wilcoxon_method(d: np.ndarray) -> str:
    """ "exact" for small samples without ties or zeros, else "asymptotic" (normal approximation, tie-corrected).

    Why not scipy's "auto": with ties or zeros and n ≤ 13 it enumerates all 2^n sign patterns, which is slow
    for the many tied 0–10 judge-score cells of a sweep; with ties the exact table is not the null anyway.

    Args:
        d: the per-item differences.
    """
    d = np.asarray(d, dtype=float)
    nonzero = np.abs(d[d != 0])
    untied = np.unique(nonzero).size == nonzero.size
    return "exact" if untied and nonzero.size == d.size and d.size <= WILCOXON_EXACT_MAX_N else "asymptotic"


def paired_tests(
    d: np.ndarray,
    rng: np.random.Generator,
    n_permutations: int = 9999,
    subjects: Sequence[str] | np.ndarray | None = None,
) -> PairedTests:
    """Two-sided Wilcoxon signed-rank p and sign-flip permutation p on paired differences.

    Args:
        d: per-item differences cell − baseline (no NaN; noise already set to 0).
        rng: the cell's generator (permutation test).
        n_permutations: random sign flips; all 2^n patterns are enumerated when that is fewer.
        subjects: one label per item: the permutation statistic is then the macro mean difference.
    """
    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return PairedTests(math.nan, math.nan, "", "n<2: no test")
    if np.all(d == 0):
        return PairedTests(1.0, 1.0, "", "all differences zero: Wilcoxon undefined, p=1")
    method = wilcoxon_method(d)
    groups = strata(subjects)
    if groups is None:
        statistic = _mean
    else:
        weights = _weights(d.size, groups)

        def statistic(x: np.ndarray, axis: int = -1) -> np.ndarray:
            return np.sum(np.moveaxis(x, axis, -1) * weights, axis=-1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p_w = float(sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method=method).pvalue)
        p_p = float(
            sps.permutation_test(
                (d,),
                statistic,
                permutation_type="samples",
                vectorized=True,
                n_resamples=n_permutations,
                alternative="two-sided",
                rng=rng,
            ).pvalue
        )
    p_w, note = floor_p(p_w, "Wilcoxon")
    return PairedTests(p_w, p_p, method, note)


@functools.cache
def mde_dz(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest standardised paired effect (Cohen's dz) a two-sided paired t-test detects with this power.

    Args:
        n: number of pairs (NaN below 3).
        alpha: the test level.
        power: the wanted power.
    """
    if n < 3:
        return math.nan
    from statsmodels.stats.power import TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(TTestPower().solve_power(nobs=n, alpha=alpha, power=power, alternative="two-sided"))
        except Exception:  # solver failure at tiny n: say "unknown", not a wrong number
            return math.nan


def adjust_pvalues(p: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Holm and Benjamini–Hochberg adjusted p over the finite entries (NaN stays NaN, outside the family).

    Args:
        p: raw p-values, one per test; NaN marks "no test".
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p, dtype=float)
    holm, bh = np.full_like(p, np.nan), np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        holm[ok] = multipletests(p[ok], method="holm")[1]
        bh[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return holm, bh
