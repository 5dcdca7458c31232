"""Correlation of two vectors in torch: Pearson, Spearman and Kendall tau-a.

Everything runs on the inputs' device (CPU or GPU), vectorised, without a
Python loop over elements. On the CPU every sort goes through NumPy (its SIMD
sorts are several times faster than ``torch.sort`` there); on a GPU through torch.

- ``rankdata``: average ranks of ties (as ``scipy.stats.rankdata``), by one sort.
- ``Ranked`` / ``rank_vector``: a vector with its ranks, built once and compared
  many times (the human RDM of an RSA against several representations).
- ``kendall_tau_a``: Knight's algorithm. Sort by ``(x, y)``; the discordant
  pairs are then the inversions of ``y``, counted by ``count_inversions``
  (``fastalign.ops.count_inversions``: the compiled merge sort when
  ``fastalign._cpu`` is built, else one NumPy sort per level; torch on a GPU).
  rsatoolbox's ``_tau_a`` is also ``O(n log n)`` (it reuses scipy's Cython merge
  sort) but runs on the CPU in NumPy only; this one gives the same number on any device.

Tau-a handles ties exactly as rsatoolbox does: a pair tied in ``x`` or in
``y`` is neither concordant nor discordant, and the denominator is always
``n (n - 1) / 2``::

    tau_a = (n0 - n_x - n_y + n_xy - 2 * n_dis) / n0

with ``n0 = n (n - 1) / 2``, ``n_x``/``n_y`` the pairs tied in x/y, ``n_xy``
the pairs tied in both, ``n_dis`` the discordant pairs. Counts are exact
Python integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple, Union

import numpy as np
import torch

from ..common.tensors import as_vector
from ..ops import count_inversions

# The paths under their former names, which tests/test_eval_rsa.py checks one by one.
from ..ops.inversions import inversions_levels as _inversions_levels  # noqa: F401
from ..ops.inversions import inversions_merge as _inversions_merge  # noqa: F401

__all__ = ["Ranked", "count_inversions", "dense_rank", "kendall_tau_a", "pearson", "rank_vector", "rankdata",
           "spearman"]


@dataclass(frozen=True)
class Ranked:
    """A 1-D vector with what every rank comparison needs, computed by one sort.

    Attributes:
        values: the vector (float32 or float64, on its device).
        ranks: 1-based average ranks of ties (float64).
        dense: 0-based dense ranks (equal values share one), int64.
        n_distinct: number of distinct values.
        tied_pairs: pairs of equal values, ``sum c (c - 1) / 2`` over the groups of ties.
    """

    values: torch.Tensor
    ranks: torch.Tensor
    dense: torch.Tensor
    n_distinct: int
    tied_pairs: int

    @property
    def n(self) -> int:
        return int(self.values.numel())


Vector = Union[Ranked, Any]


def _values(x: Vector, name: str, device=None) -> torch.Tensor:
    # Values keep float32/float64: ranks only need the order, and sorting float32 is cheaper.
    return x.values if isinstance(x, Ranked) else as_vector(x, name, device=device, dtype=None)


def _check_pair(x: Vector, y: Vector) -> Tuple[torch.Tensor, torch.Tensor]:
    xv = _values(x, "x")
    yv = _values(y, "y", device=xv.device)
    if xv.shape != yv.shape:
        raise ValueError(f"x and y must have the same length, got {xv.numel()} and {yv.numel()}")
    if xv.numel() < 2:
        raise ValueError(f"need at least 2 values to correlate, got {xv.numel()}")
    for v, r in ((xv, x), (yv, y)):
        if not isinstance(r, Ranked) and bool(torch.isnan(v).any()):
            raise ValueError("x and y must not contain NaN")
    return xv, yv


def _argsort(a: np.ndarray) -> np.ndarray:
    """An order that sorts ``a`` (ties in any order; no NaN).

    float32 (an RDM's triangle): one uint64 sort of keys holding the value's order-preserving
    bits above its index. NumPy sorts 64-bit integers with SIMD but argsorts by comparing
    through an index array: 36 against 55 ms for a THINGS RDM's 1.7M pairs.
    """
    if a.dtype != np.float32 or a.size >= 1 << 32:
        return np.argsort(a)
    u = a.view(np.uint32)
    # Negative floats: flip every bit (larger magnitude, smaller); others: set the sign bit. -0.0
    # and +0.0 land next to each other, so equal values stay contiguous.
    key = np.where(u >> np.uint32(31) == 1, ~u, u | np.uint32(1 << 31)).astype(np.uint64) << np.uint64(32)
    key |= np.arange(a.size, dtype=np.uint64)
    key.sort()
    return (key & np.uint64(0xFFFFFFFF)).astype(np.intp)


def _rank_parts(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(average ranks float64, dense ranks int64, group sizes int64) of a 1-D tensor, by one sort."""
    n = x.numel()
    if x.device.type == "cpu":
        a = x.numpy()
        order = _argsort(a)
        s = a[order]
        new = np.empty(n, dtype=bool)
        new[:1] = True
        np.not_equal(s[1:], s[:-1], out=new[1:])
        group = np.cumsum(new) - 1
        counts = np.bincount(group)
        dense = np.empty(n, dtype=np.int64)
        dense[order] = group
        ranks = np.empty(n, dtype=np.float64)
        if counts.size == n:  # no ties (the usual case for float RDMs): ranks are positions
            ranks[order] = np.arange(1, n + 1, dtype=np.float64)
        else:
            starts = np.cumsum(counts) - counts
            ranks[order] = (starts + (counts - 1) / 2 + 1)[group]
        return torch.from_numpy(ranks), torch.from_numpy(dense), torch.from_numpy(counts)
    s, order = torch.sort(x)
    new = torch.ones_like(s, dtype=torch.bool)
    new[1:] = s[1:] != s[:-1]
    group = torch.cumsum(new, 0) - 1
    counts = torch.bincount(group)
    dense = torch.empty(x.shape, dtype=torch.int64, device=x.device)
    dense[order] = group
    starts = torch.cumsum(counts, 0) - counts
    avg = starts.to(torch.float64) + (counts.to(torch.float64) - 1) / 2 + 1
    ranks = torch.empty(x.shape, dtype=torch.float64, device=x.device)
    ranks[order] = avg[group]
    return ranks, dense, counts


def _tied_pairs(counts: torch.Tensor) -> int:
    """Number of pairs with equal values from the group sizes: sum of c (c - 1) / 2."""
    counts = counts.to(torch.int64)
    return int((counts * (counts - 1) // 2).sum())


def rank_vector(x: Any, name: str = "x") -> Ranked:
    """Rank a 1-D vector once for several ``spearman`` / ``kendall_tau_a`` / ``pearson`` calls.

    Args:
        x: 1-D numpy array or tensor, no NaN.
        name: what ``x`` is called in an error.
    """
    if isinstance(x, Ranked):
        return x
    v = as_vector(x, name, dtype=None)
    if bool(torch.isnan(v).any()):
        raise ValueError(f"{name} must not contain NaN")
    ranks, dense, counts = _rank_parts(v)
    return Ranked(v, ranks, dense, int(counts.numel()), _tied_pairs(counts))


def rankdata(x: Any) -> torch.Tensor:
    """1-based ranks of a 1-D vector, ties given their average rank (float64)."""
    if isinstance(x, Ranked):
        return x.ranks
    return _rank_parts(as_vector(x, "x", dtype=None))[0]


def dense_rank(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """0-based dense ranks (equal values share a rank) and the number of distinct values."""
    _, dense, counts = _rank_parts(x)
    return dense, int(counts.numel())


def kendall_tau_a(x: Vector, y: Vector) -> float:
    """Kendall's tau-a of two 1-D vectors (ties as in rsatoolbox; see the module docstring).

    Args:
        x, y: 1-D numpy arrays, tensors or ``Ranked`` vectors of the same length (>= 2), no NaN.
    """
    _check_pair(x, y)
    rx, ry = rank_vector(x, "x"), rank_vector(y, "y")
    n = rx.n
    n0 = n * (n - 1) // 2
    dx, dy = rx.dense, ry.dense.to(rx.dense.device)
    if rx.n_distinct == n or ry.n_distinct == n:
        # One side without ties orders the pairs by itself (tau is symmetric), no joint ties.
        if rx.n_distinct != n:
            dx, dy = dy, dx
        order = torch.empty_like(dx)
        order[dx] = torch.arange(n, device=dx.device)
        n_dis, n_xy = count_inversions(dy[order]), 0
    else:
        key = dx * ry.n_distinct + dy  # lexicographic (x, y) as one integer; < n^2 fits int64 for n < 3e9
        if key.device.type == "cpu":
            ks = torch.from_numpy(np.sort(key.numpy()))
        else:
            ks = torch.sort(key).values
        n_dis = count_inversions(ks % ry.n_distinct)
        # Joint ties are runs of equal keys in sorted order: no further sort needed.
        _, cxy = torch.unique_consecutive(ks, return_counts=True)
        n_xy = _tied_pairs(cxy)
    return (n0 - rx.tied_pairs - ry.tied_pairs + n_xy - 2 * n_dis) / n0


def pearson(x: Vector, y: Vector) -> float:
    """Pearson correlation in float64; NaN when either vector is constant."""
    xv, yv = _check_pair(x, y)
    xv, yv = xv.to(torch.float64), yv.to(torch.float64)
    xc = xv - xv.mean()
    yc = yv - yv.mean()
    denom = torch.sqrt(torch.dot(xc, xc) * torch.dot(yc, yc))
    if float(denom) == 0.0:
        return float("nan")
    return float((torch.dot(xc, yc) / denom).clamp(-1.0, 1.0))


def spearman(x: Vector, y: Vector) -> float:
    """Spearman rank correlation (Pearson of average ranks); NaN when either vector is constant."""
    _check_pair(x, y)
    return pearson(rank_vector(x, "x").ranks, rank_vector(y, "y").ranks)
