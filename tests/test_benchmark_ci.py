"""P1's verdict rule (benchmarks/steering_overhead.py): the median ratio's distribution-free 95% CI from order
statistics, and a goal counts as met only when the whole interval lies above it."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "steering_overhead.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("steering_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _coverage(n: int, k: int) -> float:
    """P(x_(k) <= median < x_(n+1-k)) for a continuous distribution: 1 - 2 P(Bin(n, 1/2) <= k - 1), by counting."""
    return 1 - 2 * sum(math.comb(n, j) for j in range(k)) / 2**n


def test_ten_runs_give_the_second_and_ninth_order_statistics(bench):
    ratios = [1.05, 0.99, 1.10, 1.01, 0.98, 1.03, 1.07, 1.02, 1.00, 1.04]
    med, low, high, coverage = bench.median_ci(ratios)
    ordered = sorted(ratios)
    assert (low, high) == (ordered[1], ordered[8])  # k = 2: coverage 97.9%; k = 3 would give only 89%
    assert coverage == pytest.approx(_coverage(10, 2)) and _coverage(10, 3) < 0.95 <= coverage
    assert med == pytest.approx((ordered[4] + ordered[5]) / 2)


def test_the_goal_is_met_only_when_the_whole_interval_is_above_it(bench):
    assert "MET" in bench.verdict(0.98, 1.1, 0.97) and "NOT" not in bench.verdict(0.98, 1.1, 0.97)
    assert "NOT ESTABLISHED" in bench.verdict(0.96, 1.1, 0.97)  # median above the goal is not enough
    assert "NOT MET" in bench.verdict(0.90, 0.96, 0.97)
    assert bench.median_ci([1.0, 1.1])[1] is None and "no verdict" in bench.verdict(None, None, 0.97)
    assert bench.median_ci([1.0] * 5)[1] is None and bench.median_ci([1.0] * 6)[1] == 1.0  # 6 runs: the smallest n
