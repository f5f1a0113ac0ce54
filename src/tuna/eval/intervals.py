"""95% intervals for a comparison's figures: over seeds when a variant ran several times (Student's t),
over items when it ran once (a percentile bootstrap of the per-item scores)."""
from __future__ import annotations

import math
import random
import statistics

# Student's t at 0.975 for 1..30 degrees of freedom; past 30 the normal 1.96 is within 2%.
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of `values` (two or more), at 95%."""
    mean = statistics.fmean(values)
    df = len(values) - 1
    half = (T_975[df - 1] if df <= len(T_975) else 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def bootstrap_interval(scores: list[float], *, draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of per-item `scores`, from `draws` resamples of the items, at 95%."""
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(rng.choices(scores, k=n)) / n for _ in range(draws))
    return statistics.fmean(scores), means[int(0.025 * draws)], means[min(draws - 1, int(0.975 * draws))]


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two (low, high) intervals share a point: their difference is within noise."""
    return a[0] <= b[1] and b[0] <= a[1]
