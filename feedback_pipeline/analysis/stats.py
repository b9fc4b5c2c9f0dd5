"""Small, dependency-light statistics for rates of liked/disliked answers."""

from __future__ import annotations

import math

from scipy import stats


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
    z = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    p = successes / n
    denom = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    # Clip float round-off so k=0 gives exactly 0 and k=n exactly 1.
    return max(0.0, center - half), min(1.0, center + half)


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
