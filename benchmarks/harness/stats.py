"""How much slower one variant is than another, with an interval, from repeated runs.

A run's rounds share its conditions (which processes the machine scheduled, what the
cluster had cached), so rounds are not independent draws: the interval comes from a
two-level bootstrap that resamples runs, then rounds within each resampled run. The
estimate is the ratio of the pooled medians (every round of every run of a variant),
which a single slow run moves less than a median of per-run medians.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
"""Bootstrap resamples per interval."""
LEVEL = 0.90
"""Coverage of the reported interval."""


@dataclass(frozen=True)
class Cost:
    """`variant / base - 1` of pooled medians, with a bootstrap interval."""

    estimate: float
    low: float
    high: float
    rounds: tuple[int, int]
    """Values pooled: (base, variant)."""

    def text(self) -> str:
        return f"{self.estimate * 100:+.1f}% [{self.low * 100:+.1f}, {self.high * 100:+.1f}]"


def _pooled(runs: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(list(runs))


def _resample(runs: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    picked = rng.integers(0, len(runs), size=len(runs))
    return np.concatenate(
        [runs[i][rng.integers(0, len(runs[i]), size=len(runs[i]))] for i in picked]
    )


def relative_cost(
    base: Sequence[Sequence[float]],
    variant: Sequence[Sequence[float]],
    *,
    higher_is_better: bool = False,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Cost | None:
    """The variant's cost against the base: `median(variant) / median(base) - 1` for
    times, `median(base) / median(variant) - 1` for rates (`higher_is_better`). Each
    argument holds one sequence of values per run; empty runs are ignored. None if a
    side has no value. Deterministic for a given `seed`."""
    b = [np.asarray(r, dtype=float) for r in base if len(r)]
    v = [np.asarray(r, dtype=float) for r in variant if len(r)]
    if not b or not v:
        return None

    def ratio(xb: np.ndarray, xv: np.ndarray) -> float:
        mb, mv = float(np.median(xb)), float(np.median(xv))
        return mb / mv - 1 if higher_is_better else mv / mb - 1

    rng = np.random.default_rng(seed)
    draws = np.array([ratio(_resample(b, rng), _resample(v, rng)) for _ in range(resamples)])
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Cost(
        ratio(_pooled(b), _pooled(v)),
        float(low),
        float(high),
        (sum(len(r) for r in b), sum(len(r) for r in v)),
    )
