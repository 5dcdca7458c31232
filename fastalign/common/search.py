"""Bounded minimisation of a unimodal function of one variable."""

from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 1/phi: the interval shrinks by this factor per step


def golden_section_minimize(f: Callable[[float], float], lo: float, hi: float, tol: float = 1e-4,
                            max_iter: int = 200) -> Tuple[float, float, Dict[float, float]]:
    """Minimise ``f`` on ``[lo, hi]`` by golden-section search (one new evaluation per step).

    Args:
        f: the function; assumed unimodal on the interval (otherwise a local minimum is found).
        lo, hi: the bracket, ``lo < hi``.
        tol: stop when the bracket is narrower than this.
        max_iter: bound on the number of steps.

    Returns:
        ``(x, f(x), evaluations)`` for the best point seen, with every evaluated ``x -> f(x)``.
    """
    if not lo < hi:
        raise ValueError(f"golden-section search needs lo < hi, got [{lo}, {hi}]")
    seen: Dict[float, float] = {}

    def ev(x: float) -> float:
        if x not in seen:
            seen[x] = float(f(x))
        return seen[x]

    a, b = lo, hi
    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    for _ in range(max_iter):
        if b - a <= tol:
            break
        if ev(c) <= ev(d):
            b, d = d, c
            c = b - _INV_PHI * (b - a)
        else:
            a, c = c, d
            d = a + _INV_PHI * (b - a)
    if not seen:  # the bracket was already narrower than tol: its midpoint is the answer
        ev((a + b) / 2)
    best = min(seen, key=seen.get)
    return best, seen[best], seen
