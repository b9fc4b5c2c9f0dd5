"""Statistics for rates of liked/disliked answers and bootstrap intervals of evaluation metrics: thin wrappers that
fix the project's conventions (NaN for an empty segment, a fixed seed, zero width without spread) around statsmodels
and scipy."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats
from statsmodels.stats.proportion import proportion_confint


def _check_counts(successes: int, n: int) -> None:
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    Wilson rather than the normal approximation because feedback segments are often small and
    rates near 0 or 1, where the normal interval collapses or leaves [0, 1].

    ``n == 0`` returns ``(nan, nan)`` instead of raising: an empty segment carries no information,
    and NaN flows through tables and reports without special cases.
    """
    _check_counts(successes, n)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n == 0:
        return math.nan, math.nan
    low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    # Clip float round-off so k=0 gives exactly 0 and k=n exactly 1.
    return max(0.0, float(low)), min(1.0, float(high))


def compare_rates(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Compare two rates ``k1/n1`` and ``k2/n2``; returns ``(k1/n1 - k2/n2, two-sided p-value)``.

    Uses Fisher's exact test on the 2x2 table: it is valid for the small segments that are common
    in feedback data, where a z-test's normal approximation is not. Either ``n`` being 0 gives
    ``(nan, nan)``, matching :func:`wilson_interval`.
    """
    _check_counts(k1, n1)
    _check_counts(k2, n2)
    if n1 == 0 or n2 == 0:
        return math.nan, math.nan
    table = [[k1, n1 - k1], [k2, n2 - k2]]
    p_value = float(stats.fisher_exact(table, alternative="two-sided").pvalue)
    return k1 / n1 - k2 / n2, min(1.0, p_value)


def bootstrap_interval(samples: Sequence[Sequence[float]], statistic: Callable[..., Any], *, paired: bool = False,
                       confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples, axis=-1)`` with ``scipy.stats.bootstrap``.

    ``statistic`` must be vectorised (it gets arrays of resamples along the last axis). ``paired``: the samples are
    resampled with the same indices (per-example differences between models); otherwise each on its own (separate
    samples, e.g. liked and disliked answers). What resampling cannot change is held fixed instead of handed to
    scipy, which needs two distinct values: a sample of one value or of one repeated value is constant, and when every
    sample is, the interval is the point estimate (zero width: the bootstrap cannot see the uncertainty).
    ``n_resamples=0`` gives NaN bounds.
    """
    arrays = [np.asarray(s, dtype=float) for s in samples]
    if not arrays or any(a.ndim != 1 or a.size == 0 for a in arrays):
        raise ValueError("bootstrap_interval needs non-empty 1-d samples")
    if n_resamples <= 0:
        return math.nan, math.nan
    point = float(statistic(*arrays, axis=-1))
    varies = [a.size > 1 and np.ptp(a) > 0 for a in arrays]
    if paired:
        if len({a.size for a in arrays}) != 1:
            raise ValueError("paired samples must have the same length")
        varies = [any(varies)] * len(arrays)
    if not any(varies):
        return point, point
    moving = [a for a, v in zip(arrays, varies) if v]

    def with_fixed(*resampled, axis=-1):
        it = iter(resampled)
        return statistic(*[next(it) if v else a for a, v in zip(arrays, varies)], axis=axis)

    res = stats.bootstrap(moving, with_fixed, paired=paired, vectorized=True, confidence_level=confidence,
                          n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
