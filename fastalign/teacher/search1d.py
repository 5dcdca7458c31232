"""The 1-D searches of the teacher (temperature, initial scale) on ``fastalign.common.search``."""

from __future__ import annotations

from typing import Callable

from ..common.search import golden_section_minimize

__all__ = ["bracket_midpoint"]


def bracket_midpoint(f: Callable[[float], float], lo: float, hi: float, tol: float) -> float:
    """Minimise a unimodal ``f`` on ``[lo, hi]``; return the centre of the final bracket.

    The minimiser of a unimodal function lies between the evaluated neighbours of
    the best evaluated point, so the centre of that interval is within ``tol / 2`` of
    it. It is also what these searches returned before they used the shared
    golden-section helper, so fits reproduce exactly.
    """
    best, _, seen = golden_section_minimize(f, lo, hi, tol=tol)
    below = max((x for x in seen if x < best), default=lo)
    above = min((x for x in seen if x > best), default=hi)
    return (below + above) / 2
