"""Correlation of two vectors in torch: Pearson, Spearman and Kendall tau-a.

Everything runs on the inputs' device (CPU or GPU), vectorised, without a
Python loop over elements:

- ``rankdata``: average ranks of ties (as ``scipy.stats.rankdata``), by one sort.
- ``kendall_tau_a``: Knight's algorithm. Sort by ``(x, y)``; the discordant
  pairs are then the inversions of ``y``, counted by a bottom-up merge sort in
  which each level merges all runs at once with batched ``searchsorted``
  (``log2 n`` levels, ``O(n log n)`` memory traffic per level). rsatoolbox's
  ``_tau_a`` is also ``O(n log n)`` (it reuses scipy's Cython merge sort) but
  runs on the CPU in NumPy only; this one gives the same number on any device.

Tau-a handles ties exactly as rsatoolbox does: a pair tied in ``x`` or in
``y`` is neither concordant nor discordant, and the denominator is always
``n (n - 1) / 2``::

    tau_a = (n0 - n_x - n_y + n_xy - 2 * n_dis) / n0

with ``n0 = n (n - 1) / 2``, ``n_x``/``n_y`` the pairs tied in x/y, ``n_xy``
the pairs tied in both, ``n_dis`` the discordant pairs. Counts are exact
Python integers.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from ..common.tensors import as_vector

__all__ = ["count_inversions", "dense_rank", "kendall_tau_a", "pearson", "rankdata", "spearman"]


def _check_pair(x: Any, y: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    # Values keep float32/float64: ranks only need the order, and sorting float32 is cheaper.
    xv = as_vector(x, "x", dtype=None)
    yv = as_vector(y, "y", device=xv.device, dtype=None)
    if xv.shape != yv.shape:
        raise ValueError(f"x and y must have the same length, got {xv.numel()} and {yv.numel()}")
    if xv.numel() < 2:
        raise ValueError(f"need at least 2 values to correlate, got {xv.numel()}")
    if bool(torch.isnan(xv).any()) or bool(torch.isnan(yv).any()):
        raise ValueError("x and y must not contain NaN")
    return xv, yv


def _groups(x: torch.Tensor, presorted: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
    """Sort ``x`` (or take ``presorted = (values, order)``); return (order, group id of each sorted element, group sizes)."""
    xs, order = torch.sort(x) if presorted is None else presorted
    new = torch.ones_like(xs, dtype=torch.bool)
    new[1:] = xs[1:] != xs[:-1]
    group = torch.cumsum(new, 0) - 1
    counts = torch.bincount(group)
    return order, group, counts


def rankdata(x: Any) -> torch.Tensor:
    """1-based ranks of a 1-D vector, ties given their average rank (float64)."""
    xv = as_vector(x, "x", dtype=None)
    xs, order = torch.sort(xv)
    ranks = torch.empty(xv.shape, dtype=torch.float64, device=xv.device)
    if xv.numel() < 2 or not bool((xs[1:] == xs[:-1]).any()):
        # No ties (the usual case for float64 RDMs): ranks are positions.
        ranks[order] = torch.arange(1, xv.numel() + 1, dtype=torch.float64, device=xv.device)
        return ranks
    order, group, counts = _groups(xv, (xs, order))
    starts = torch.cumsum(counts, 0) - counts
    avg = starts.to(torch.float64) + (counts.to(torch.float64) - 1) / 2 + 1
    ranks[order] = avg[group]
    return ranks


def dense_rank(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """0-based dense ranks (equal values share a rank) and the number of distinct values."""
    ranks, counts = _dense_rank_counts(x)
    return ranks, int(counts.numel())


def _dense_rank_counts(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    order, group, counts = _groups(x)
    ranks = torch.empty(x.shape, dtype=torch.int64, device=x.device)
    ranks[order] = group
    return ranks, counts


def _tied_pairs(counts: torch.Tensor) -> int:
    """Number of pairs with equal values from the group sizes: sum of c (c - 1) / 2."""
    counts = counts.to(torch.int64)
    return int((counts * (counts - 1) // 2).sum())


def count_inversions(y: torch.Tensor) -> int:
    """Number of pairs ``i < j`` with ``y[i] > y[j]`` (strict; equal values are not inversions).

    Bottom-up merge sort: at width ``w`` the array is a row of sorted runs of
    length ``w``; each pair of runs is merged at once for all pairs. For every
    element of a right run, ``w - #(left <= it)`` left elements exceed it.
    """
    if y.dim() != 1:
        raise ValueError(f"y must be 1-D, got shape {tuple(y.shape)}")
    n = y.numel()
    if n < 2:
        return 0
    y = y.long()
    size = 1 << (n - 1).bit_length()
    # Pads hold a value above every real one and sit at the end, so they are
    # never greater than an element to their right: they add no inversion.
    a = torch.full((size,), int(y.max()) + 1, dtype=torch.int64, device=y.device)
    a[:n] = y
    small = size < 2**31
    total = 0
    w = 1
    while w < size:
        runs = a.view(-1, 2, w)
        left = runs[:, 0].contiguous()
        right = runs[:, 1].contiguous()
        le = torch.searchsorted(left, right, right=True, out_int32=small)  # left elements <= each right one
        lt = torch.searchsorted(right, left, right=False, out_int32=small)  # right elements < each left one
        total += int((w - le).sum(dtype=torch.int64))
        # Merged position = index in own run + elements of the other run that go first
        # (left before equal right), which is a permutation of 0..2w-1 in each row.
        ar = torch.arange(w, device=a.device)
        merged = torch.empty((runs.shape[0], 2 * w), dtype=a.dtype, device=a.device)
        merged.scatter_(1, ar + lt.long(), left)
        merged.scatter_(1, ar + le.long(), right)
        a = merged.view(-1)
        w *= 2
    return total


def kendall_tau_a(x: Any, y: Any) -> float:
    """Kendall's tau-a of two 1-D vectors (ties as in rsatoolbox; see the module docstring).

    Args:
        x, y: 1-D numpy arrays or tensors of the same length (>= 2), no NaN.
    """
    xv, yv = _check_pair(x, y)
    n = xv.numel()
    rx, cx = _dense_rank_counts(xv)
    ry, cy = _dense_rank_counts(yv)
    key = rx * cy.numel() + ry  # lexicographic (x, y) as one integer; < n^2 fits int64 for n < 3e9
    order = torch.argsort(key)
    n_dis = count_inversions(ry[order])
    n0 = n * (n - 1) // 2
    # Joint ties are runs of equal keys in sorted order: no further sort needed.
    _, cxy = torch.unique_consecutive(key[order], return_counts=True)
    n_x, n_y, n_xy = _tied_pairs(cx), _tied_pairs(cy), _tied_pairs(cxy)
    return (n0 - n_x - n_y + n_xy - 2 * n_dis) / n0


def pearson(x: Any, y: Any) -> float:
    """Pearson correlation in float64; NaN when either vector is constant."""
    xv, yv = _check_pair(x, y)
    xv, yv = xv.to(torch.float64), yv.to(torch.float64)
    xc = xv - xv.mean()
    yc = yv - yv.mean()
    denom = torch.sqrt((xc * xc).sum() * (yc * yc).sum())
    if float(denom) == 0.0:
        return float("nan")
    return float(((xc * yc).sum() / denom).clamp(-1.0, 1.0))


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation (Pearson of average ranks); NaN when either vector is constant."""
    xv, yv = _check_pair(x, y)
    return pearson(rankdata(xv), rankdata(yv))
