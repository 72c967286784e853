"""Paired per-seed differences between rows with Student-t 95% intervals (no SciPy)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _t_cdf(x: float, df: int) -> float:
    """CDF of Student's t with ``df`` degrees of freedom (Simpson's rule on the density)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    grid = np.linspace(0.0, abs(x), 4001)
    density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid**2 / df))
    step = grid[1] - grid[0]
    area = (
        step
        / 3
        * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())
    )
    return 0.5 + math.copysign(area, x)


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t (bisection on :func:`_t_cdf`)."""
    if not 0.5 <= probability < 1.0 or df < 1:
        raise ValueError(
            f"t_quantile needs 0.5 <= probability < 1 and df >= 1; got {probability}, {df}."
        )
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < probability:
        high *= 2.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_cdf(middle, df) < probability else (low, middle)
    return (low + high) / 2


def paired_differences(
    rows: list[dict[str, Any]], pairs: Sequence[Sequence[str]], key: str = "final_test_accuracy"
) -> list[dict[str, Any]]:
    """Per pair (a, b): the per-seed differences a - b over the seeds both have, their mean
    and the 95% t-interval ``mean +- t(0.975, n-1) * sd / sqrt(n)`` (none below 2 seeds)."""
    results = []
    for first, second in pairs:
        values = {
            name: {row["seed"]: row[key] for row in rows if row["row"] == name}
            for name in (first, second)
        }
        seeds = sorted(set(values[first]) & set(values[second]))
        if not seeds:
            continue
        diffs = np.array([values[first][s] - values[second][s] for s in seeds], np.float64)
        mean = float(diffs.mean())
        interval = None
        if len(diffs) > 1:
            half = t_quantile(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
            interval = (mean - half, mean + half)
        results.append(
            {
                "pair": f"{first} - {second}",
                "seeds": seeds,
                "differences": diffs.tolist(),
                "mean": mean,
                "interval": interval,
            }
        )
    return results
