"""The benchmark's relative cost with a bootstrap interval (`benchmarks/harness/stats.py`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from harness.stats import relative_cost  # noqa: E402


def runs(rng: np.random.Generator, centre: float, n_runs: int, rounds: int) -> list[list[float]]:
    """Runs whose level varies from run to run (by 10 %) and rounds within a run (5 %)."""
    out = []
    for _ in range(n_runs):
        level = centre * (1 + 0.10 * rng.standard_normal())
        out.append(list(level * (1 + 0.05 * rng.standard_normal(rounds))))
    return out


def test_the_estimate_is_the_ratio_of_pooled_medians() -> None:
    cost = relative_cost([[1.0, 1.0, 3.0], [1.0, 5.0]], [[1.2, 1.2], [1.2, 9.0, 9.0]])
    assert cost is not None
    assert cost.estimate == 1.2 / 1.0 - 1  # medians of the pooled values
    assert cost.rounds == (5, 5)
    assert cost.low <= cost.high


def test_a_rate_costs_when_it_falls() -> None:
    cost = relative_cost([[100.0], [100.0]], [[80.0], [80.0]], higher_is_better=True)
    assert cost is not None and abs(cost.estimate - 0.25) < 1e-12


def test_the_interval_covers_a_known_cost_and_narrows_with_more_runs() -> None:
    rng = np.random.default_rng(7)
    few = relative_cost(runs(rng, 1.0, 3, 10), runs(rng, 1.08, 3, 10))
    many = relative_cost(runs(rng, 1.0, 20, 40), runs(rng, 1.08, 20, 40))
    assert few is not None and many is not None
    assert many.low < 0.08 < many.high
    assert many.high - many.low < few.high - few.low
    assert many.low > 0  # 20 runs of each tell an 8 % cost from none


def test_run_to_run_spread_widens_the_interval_beyond_what_rounds_alone_suggest() -> None:
    # Two runs per side whose levels differ by 30 %: many rounds per run do not make
    # the cost certain, because the runs are what varies.
    base = [[1.0] * 200, [1.3] * 200]
    variant = [[1.1] * 200, [1.2] * 200]
    cost = relative_cost(base, variant)
    assert cost is not None and cost.low < 0 < cost.high


def test_no_values_on_a_side_gives_no_cost() -> None:
    assert relative_cost([], [[1.0]]) is None
    assert relative_cost([[1.0]], [[]]) is None


def test_the_interval_is_reproducible_for_a_seed() -> None:
    rng = np.random.default_rng(1)
    base, variant = runs(rng, 1.0, 4, 10), runs(rng, 1.1, 4, 10)
    assert relative_cost(base, variant, seed=3) == relative_cost(base, variant, seed=3)
