"""Inversion counts: pairs ``i < j`` with ``y[i] > y[j]``, the discordant pairs of Kendall's tau.

``count_inversions`` takes one of three exact paths:

- "cpu": the compiled merge sort (``csrc/cpu/inversions.h``), for CPU tensors
  when ``fastalign._cpu`` is built and loads; 57 ms against 370-580 ms for
  "numpy" (6-7x) on the 1.7M pairs of the 1854-item THINGS RDMs (2-core dev
  machine, load 2-4, 2026-12-02).
- "numpy": one NumPy sort of packed keys per level (``inversions_levels``);
  the reference, and the fallback of a core install without a compiler.
- "torch": a bottom-up merge sort in torch (``inversions_merge``), for tensors
  on a GPU.

The compiled kernel runs on one thread: on the 2-core dev machine, shared, a
second OpenMP thread made it slower (144 ms against 57 ms: it waits at every
level for a thread the scheduler has not run yet).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..kernels import cpu as cpu_kernels

PATHS = ("auto", "cpu", "numpy", "torch")


def inversions_merge(y: torch.Tensor) -> int:
    """Inversions of an int64 tensor by a bottom-up merge sort in torch (the GPU path).

    At width ``w`` the array is a row of sorted runs of length ``w``; each pair
    of runs is merged at once for all pairs. For every element of a right run,
    ``w - #(left <= it)`` left elements exceed it.
    """
    n = y.numel()
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


def _local_ranks(v: np.ndarray, vbits: int, t: int) -> np.ndarray:
    """Dense ranks of ``v`` within each block of ``2^t`` positions (order and ties kept inside a block)."""
    pos = np.arange(v.size, dtype=np.int64)
    key = ((pos >> t) << vbits) | v
    order = np.argsort(key)
    ks = key[order]
    new = np.empty(v.size, dtype=np.int64)
    new[:1] = 1
    np.not_equal(ks[1:], ks[:-1], out=new[1:])
    dense = np.cumsum(new)
    # Sorting by block first keeps every block at its own positions.
    local = dense - dense[(pos >> t) << t]
    out = np.empty_like(local)
    out[order] = local
    return out


def _block_terms(n: int, s: int) -> int:
    """Sum over the blocks of ``2^s`` positions of ``l * start + l (l - 1) / 2``, ``l`` its left elements."""
    size, w = 1 << s, 1 << (s - 1)
    full, rest = divmod(n, size)
    total = w * size * full * (full - 1) // 2 + full * w * (w - 1) // 2
    last = min(w, rest)  # the short last block
    return total + last * full * size + last * (last - 1) // 2


def inversions_levels(y: np.ndarray, key_bits: int = 31) -> int:
    """Inversions of non-negative ints by one NumPy sort per level (the CPU path without the extension).

    Level ``s`` counts the inversions between the two halves of every block of
    ``2^s`` positions. Sorting every block by ``(value, half)`` (one sort of packed
    keys for all blocks) puts before each left-half element exactly the
    right-half elements smaller than it: their number is the element's position
    in its block minus the left elements before it. So a level's count is the
    sum of its left elements' positions (a dot product) minus, per block,
    ``l (l - 1) / 2`` for its ``l`` left elements and ``l`` times its start.
    Equal values are no inversion: the half bit sorts a left element before an
    equal right one. Keys are int32 (half the sort time of int64): when block,
    value and half bits no longer fit, the values are replaced by their dense
    ranks within the current blocks, which is all the lower levels compare.
    ``key_bits`` (31, or 63 for int64 keys) is lowered in the tests to exercise that.
    """
    n = y.size
    levels = (n - 1).bit_length()
    if levels + 3 > key_bits:
        key_bits = 63
    kdt = np.int32 if key_bits <= 31 else np.int64
    v = y.astype(np.int64)
    vbits = max(1, int(v.max()).bit_length())
    total = int(np.count_nonzero(v[0:n - 1:2] > v[1::2]))  # level 1: adjacent pairs
    pos = np.arange(n, dtype=kdt)
    # Exact int64 position sums; einsum, not np.dot: no BLAS threads to wake beside torch's.
    pos64 = np.arange(n, dtype=np.int64)
    q = np.empty_like(pos)
    key = np.empty_like(pos)
    v2 = None
    for s in range(levels, 1, -1):
        if (levels - s) + vbits + 1 > key_bits:
            v = _local_ranks(v, vbits, s)
            vbits, v2 = max(1, s), None
        if v2 is None:
            v2 = (v << 1).astype(kdt)
        np.right_shift(pos, s - 1, out=q)  # block index * 2 + half
        np.right_shift(q, 1, out=key)
        np.left_shift(key, vbits + 1, out=key)
        np.bitwise_or(key, v2, out=key)
        np.bitwise_and(q, 1, out=q)
        np.bitwise_or(key, q, out=key)
        key.sort()
        np.bitwise_and(key, 1, out=q)  # 1 where a right element sits in the sorted blocks
        left_pos = n * (n - 1) // 2 - int(np.einsum("i,i->", q, pos64))
        total += left_pos - _block_terms(n, s)
    return total


def _count_numpy(y: torch.Tensor) -> int:
    a = y.numpy()
    # Packed keys need values below 2^31 or so; dense ranks (< n) always fit.
    if int(a.min()) < 0 or int(a.max()) >= max(a.size, 1 << 20):
        a = np.unique(a, return_inverse=True)[1].reshape(-1)
    return inversions_levels(a)


def compiled_available() -> bool:
    """Whether the "cpu" path (the compiled kernel) loads."""
    try:
        cpu_kernels.count_inversions(torch.zeros(0, dtype=torch.int64))
    except ImportError:
        return False
    return True


def _as_int64(y: Any) -> torch.Tensor:
    if isinstance(y, torch.Tensor) and y.dtype == torch.uint64:
        y = y.cpu().numpy()  # values >= 2^63 would wrap in int64: ranked below
    if not isinstance(y, torch.Tensor):
        y = np.asarray(y)
        if y.dtype == np.uint64 and y.size and int(y.max()) >= 2**63:
            y = np.unique(y, return_inverse=True)[1].reshape(y.shape)  # order kept, no int64 overflow
        if y.dtype.kind not in "biu":
            raise ValueError(f"y must hold integers, got dtype {y.dtype}")
        # A copy where torch cannot view it (a negative stride, even of a contiguous length-1 view).
        y = torch.from_numpy(y if y.flags.c_contiguous and min(y.strides, default=0) >= 0 else y.copy())
    elif y.dtype.is_floating_point or y.dtype.is_complex:
        raise ValueError(f"y must hold integers, got dtype {y.dtype}")
    if y.dim() != 1:
        raise ValueError(f"y must be 1-D, got shape {tuple(y.shape)}")
    return y.long().contiguous()


def count_inversions(y: Any, path: str = "auto") -> int:
    """Number of pairs ``i < j`` with ``y[i] > y[j]`` (strict; equal values are not inversions).

    Args:
        y: 1-D integer (or bool) tensor or NumPy array, any values; exact for any int64.
        path: "auto" ("torch" on a GPU; on the CPU "cpu" when the extension
            loads, else "numpy"), or one of them to force it ("cpu" raises
            ImportError without the extension).
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    y = _as_int64(y)
    if y.numel() < 2:
        return 0
    if path == "auto":
        path = "torch" if y.device.type != "cpu" else "cpu" if compiled_available() else "numpy"
    if path == "torch":
        return inversions_merge(y)
    y = y.cpu()
    if path == "cpu":
        return cpu_kernels.count_inversions(y)
    return _count_numpy(y)
