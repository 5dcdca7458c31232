"""Confidence intervals for a binomial proportion (an accuracy over ``n`` triplets).

The Wilson score interval (Wilson, 1927) is used rather than the normal ("Wald") one: it stays
inside [0, 1] and keeps close to its nominal coverage for small ``n`` and accuracies near 0 or 1,
where the Wald interval collapses (a level with 68 triplets is small).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Tuple

__all__ = ["wilson_interval"]


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """The Wilson score interval of the proportion ``successes / n``.

    Args:
        successes: number of successes (may be fractional, e.g. ``accuracy * n`` rounded by floats).
        n: number of trials, >= 1.
        confidence: two-sided level in (0, 1).

    Returns ``(lower, upper)`` in [0, 1].
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive whole number, got {n!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if not (math.isfinite(successes) and -1e-9 * n <= successes <= n * (1 + 1e-9)):
        raise ValueError(f"successes must lie in [0, n] = [0, {n}], got {successes!r}")
    n = int(n)
    p = min(max(successes / n, 0.0), 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    return max(0.0, centre - half), min(1.0, centre + half)
