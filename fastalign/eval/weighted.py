"""Pearson, Spearman and Kendall tau-a of resampled vectors, for many resamples at once.

A bootstrap resample of stimuli (``fastalign.eval.human_rdm``) repeats the pairs of the
RDM: the pair of stimuli ``s < t`` drawn ``c_s`` and ``c_t`` times appears ``c_s c_t``
times. Every correlation of the resampled vectors is then a *weighted* correlation
over the distinct pairs, with weight ``w = c_s c_t`` per pair (0 when a stimulus was
not drawn), and all resamples share the pairs' values, so the work is one pass over
a (resamples x pairs) weight matrix instead of one expanded vector per resample:

- Pearson: weighted means and (co)variances;
- Spearman: Pearson of the average ranks in the expanded sample: a pair's copies tie
  with each other, so its rank is the weight of the smaller values plus half its tie
  group's weight (``(W_group + 1) / 2``);
- tau-a: ``(n0 - n_x - n_y + n_xy - 2 n_dis) / n0`` with ``n = sum w``, the tie
  counts from group weights ``G (G - 1) / 2`` (a pair's copies are tied in both) and
  ``n_dis`` the weighted inversions ``sum w_i w_j`` of ``y`` in ``(x, y)`` order,
  counted level by level as in ``fastalign.eval.correlation`` (one sort of packed
  keys per level for all resamples).

Numbers equal those of the expanded vectors (counts are exact in float64, the
correlations agree to rounding). Arrays are NumPy float64 on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SortedVector", "sorted_vector", "weighted_pearson", "weighted_ranks", "weighted_tau_a", "weighted_zscores"]


@dataclass(frozen=True)
class SortedVector:
    """A vector common to all resamples, sorted once: its order and tie groups."""

    values: np.ndarray  # (P,) float64
    order: np.ndarray  # argsort of values
    group: np.ndarray  # (P,) tie group of each sorted element, 0-based
    start: np.ndarray  # (P,) first sorted position of each sorted element's group
    end: np.ndarray  # (P,) one past its last
    dense: np.ndarray  # (P,) dense rank of each element (original order)


def sorted_vector(values: np.ndarray) -> SortedVector:
    """``SortedVector`` of a 1-D vector."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    s = v[order]
    new = np.ones(v.size, dtype=bool)
    new[1:] = s[1:] != s[:-1]
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], v.size)
    dense = np.empty(v.size, dtype=np.int64)
    dense[order] = group
    return SortedVector(v, order, group, starts[group], ends[group], dense)


def _row_groups(s: np.ndarray):
    """Tie groups of each row of a row-sorted (B, P) array: (new-group flags, group start, group end)."""
    b, p = s.shape
    new = np.ones(s.shape, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    idx = np.broadcast_to(np.arange(p), s.shape)
    start = np.maximum.accumulate(np.where(new, idx, 0), axis=1)
    last = np.ones(s.shape, dtype=bool)
    last[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(last, idx + 1, p)[:, ::-1], axis=1)[:, ::-1]
    return new, start, end


def _ranks_sorted(ws: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Average expanded ranks of sorted elements with weights ``ws`` and tie groups [start, end)."""
    b = ws.shape[0]
    c = np.zeros((b, ws.shape[1] + 1))
    np.cumsum(ws, axis=1, out=c[:, 1:])
    rows = np.arange(b)[:, None]
    before = c[rows, start] if start.ndim == 2 else c[:, start]
    total = (c[rows, end] if end.ndim == 2 else c[:, end]) - before
    return before + (total + 1) / 2


def weighted_ranks(x, w: np.ndarray) -> np.ndarray:
    """(B, P) average ranks of the expanded samples: ``x`` a ``SortedVector`` vector or (B, P) values per resample."""
    if isinstance(x, SortedVector):
        out = np.empty_like(w)
        out[:, x.order] = _ranks_sorted(w[:, x.order], x.start, x.end)
        return out
    order = np.argsort(x, axis=1, kind="stable")
    s = np.take_along_axis(x, order, 1)
    _, start, end = _row_groups(s)
    out = np.empty_like(w)
    np.put_along_axis(out, order, _ranks_sorted(np.take_along_axis(w, order, 1), start, end), 1)
    return out


def _values(x) -> np.ndarray:
    return x.values if isinstance(x, SortedVector) else x


def weighted_pearson(x, y, w: np.ndarray) -> np.ndarray:
    """(B,) Pearson correlations of the expanded samples (NaN where either is constant).

    Args:
        x, y: ``SortedVector`` vectors, (P,) arrays or (B, P) values per resample.
        w: (B, P) non-negative weights.
    """
    xv, yv = _values(x), _values(y)
    tw = w.sum(1)
    mx = (w * xv).sum(1) / tw
    my = (w * yv).sum(1) / tw
    xc = xv - mx[:, None]
    yc = yv - my[:, None]
    wxc = w * xc
    sxx, syy, sxy = (wxc * xc).sum(1), (w * yc * yc).sum(1), (wxc * yc).sum(1)
    const = _constant(xv, w) | _constant(yv, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0)
    return np.where(const | ~(sxx * syy > 0), np.nan, r)


def _constant(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B,) True where every value with weight > 0 is the same."""
    on = w > 0
    hi = np.where(on, v, -np.inf).max(1)
    lo = np.where(on, v, np.inf).min(1)
    return hi == lo


def weighted_zscores(x, w: np.ndarray) -> np.ndarray:
    """(B, P) z-scores (population SD) of the expanded samples."""
    xv = _values(x)
    tw = w.sum(1)
    m = (w * xv).sum(1) / tw
    xc = xv - m[:, None]
    sd = np.sqrt((w * xc * xc).sum(1) / tw)
    return xc / sd[:, None]


def _tied_pairs_rows(ws: np.ndarray, new: np.ndarray) -> np.ndarray:
    """(B,) sum of G (G - 1) / 2 over each row's tie groups (``new`` marks each group's first element)."""
    b, p = ws.shape
    gid = np.cumsum(new, axis=1) - 1 + (np.arange(b) * p)[:, None]
    g = np.bincount(gid.ravel(), weights=ws.ravel(), minlength=b * p).reshape(b, p)
    return (g * (g - 1) / 2).sum(1)


def _inversions(dense: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B,) weighted inversions ``sum w_i w_j [i < j, y_i > y_j]`` of non-negative ints per row.

    ``dense`` is (P,) (the same values for all rows: each level's order is shared) or (B, P).
    Level ``s``: every block of ``2^s`` positions sorted by ``(value, half)``; each left-half
    element pairs with the right-half weight sorted before it (smaller values). The pairs are
    padded to a power of two with weight 0, so blocks are a reshape (the weight before an
    element in its block is a running sum along the row minus the one at the block's start).
    Weights are small integers (products of draw counts): int32 sums are exact. The running
    sums and elementwise work go through torch (its row-wise cumsum is several times NumPy's).
    """
    b, p = w.shape
    levels = max(1, (p - 1).bit_length())
    size = 1 << levels
    wint = np.zeros((b, size), dtype=np.int32)
    wint[:, :p] = np.rint(w)
    if int(wint.sum(1).max()) * max(1, int(wint.max())) >= 2**31:
        raise ValueError("resample weights too large for the int32 inversion count")
    shared = dense.ndim == 1
    vals = np.zeros(size if shared else (b, size), dtype=np.int64)
    vals[..., :p] = dense
    vbits = max(1, int(vals.max()).bit_length())
    wbits = max(1, int(wint.max()).bit_length())
    pos = np.arange(size, dtype=np.int64)
    total = torch.zeros(b, dtype=torch.int64)
    wt = torch.from_numpy(wint)
    for s in range(1, levels + 1):
        q = pos >> (s - 1)
        base = ((q >> 1) << (vbits + 1)) | (q & 1)
        nb, blk = size >> s, 1 << s
        if shared:
            order = np.argsort(base | (vals << 1))
            h = torch.from_numpy((base[order] & 1).astype(bool))
            ws = wt.index_select(1, torch.from_numpy(order))
        else:
            # The weight rides in the low bits, so a plain sort (no argsort) carries it along;
            # int32 keys (half the sort time) while block, value, half and weight bits fit.
            kdt = np.int32 if (levels - s) + vbits + 1 + wbits <= 31 else np.int64
            key = ((base | (vals << 1)) << wbits).astype(kdt) | wint.astype(kdt)
            key.sort(axis=1)
            kt = torch.from_numpy(key)
            h = ((kt >> wbits) & 1).bool()
            ws = (kt & ((1 << wbits) - 1)).to(torch.int32)
        right = ws * h
        ex = torch.cumsum(right, 1, dtype=torch.int32) - right  # right weight before each element in the row
        before = (ex.view(b, nb, blk) - ex.view(b, nb, blk)[:, :, :1]).view(b, size)
        total += ((ws - right) * before).sum(1, dtype=torch.int64)
    return total.numpy().astype(np.float64)


def weighted_tau_a(x: SortedVector, y, w: np.ndarray) -> np.ndarray:
    """(B,) Kendall tau-a of the expanded samples (ties as in ``fastalign.eval.correlation``).

    Args:
        x: the ``SortedVector`` vector shared by all resamples.
        y: a ``SortedVector`` vector, or (B, P) values per resample.
        w: (B, P) non-negative integer weights.
    """
    b, p = w.shape
    n = w.sum(1)
    n0 = n * (n - 1) / 2
    if isinstance(y, SortedVector):
        ydense = y.dense
        key = x.dense * (int(y.dense.max()) + 1) + y.dense
        kfix = sorted_vector(key.astype(np.float64))
        order = kfix.order
        n_dis = _inversions(ydense[order], w[:, order])
        n_y = _tied_pairs_rows(w[:, y.order], _new_flags(y.group))
        n_xy = _tied_pairs_rows(w[:, order], _new_flags(kfix.group))
    else:
        yorder = np.argsort(y, axis=1, kind="stable")
        ys = np.take_along_axis(y, yorder, 1)
        ynew, _, _ = _row_groups(ys)
        n_y = _tied_pairs_rows(np.take_along_axis(w, yorder, 1), ynew)
        ydense = np.empty((b, p), dtype=np.int64)
        np.put_along_axis(ydense, yorder, np.cumsum(ynew, axis=1) - 1, 1)
        if x.group[-1] == p - 1:
            # x without ties orders the pairs by itself: no (x, y) sort per row; the only joint
            # ties are a pair's own copies.
            n_dis, n_xy = _inversions(ydense[:, x.order], w[:, x.order]), (w * (w - 1) / 2).sum(1)
        else:
            m = int(ydense.max()) + 1
            key = x.dense[None, :] * m + ydense
            korder = np.argsort(key, axis=1, kind="stable")
            ks = np.take_along_axis(key, korder, 1)
            wk = np.take_along_axis(w, korder, 1)
            n_dis = _inversions(ks % m, wk)
            knew, _, _ = _row_groups(ks)
            n_xy = _tied_pairs_rows(wk, knew)
    n_x = _tied_pairs_rows(w[:, x.order], _new_flags(x.group))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (n0 - n_x - n_y + n_xy - 2 * n_dis) / n0


def _new_flags(group: np.ndarray) -> np.ndarray:
    new = np.ones(group.size, dtype=bool)
    new[1:] = group[1:] != group[:-1]
    return np.broadcast_to(new, (1, group.size))
