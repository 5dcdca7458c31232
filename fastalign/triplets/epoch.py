"""The order of one epoch over a store's shards: which consumer reads which rows, in which batches.

How one epoch is laid out (everything is a pure function of the arguments, so
any position can be recomputed without reading data):

1. Every shard is cut into *blocks* of ``block_size`` consecutive triplets
   (blocks never cross shards, so reading one is a single contiguous memmap read).
2. The block order is permuted with ``rng(seed, epoch)`` (shard-level shuffle).
3. Consumers are the ``world_size * num_workers`` (rank, worker) pairs; consumer
   ``c = rank * num_workers + worker_id`` takes blocks ``c, c + C, c + 2C, ...``
   of that order. The consumers' block sets partition the store, so every
   triplet is seen exactly once per epoch across all consumers.
4. A consumer's blocks are grouped into *windows* of ``buffer_size // block_size``
   blocks; each window is read into memory and permuted with
   ``rng(seed, epoch, c, window)`` (in-buffer shuffle).
5. Batch ``b`` is positions ``[b * batch_size, (b + 1) * batch_size)`` of the
   consumer's concatenated windows (a batch may span two windows; the last
   batch may be short unless ``drop_last``). ``start_batch`` therefore skips
   straight to the right window, reading nothing before it.

This module needs only a store's ``shards`` (per-shard ``count``, ``indices``,
``sims``, ``probs`` arrays) and ``sims.dtype``, so the reader (``TripletStore.stream``)
and the public ``fastalign.triplets.stream`` both use it without importing each other.
"""

from __future__ import annotations

from typing import Iterator, List

import numpy as np
import torch

from ..common.seeds import derive_rng
from .batch import TripletBatch


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def consumer_blocks(
    shard_counts: List[int], block_size: int, seed: int, epoch: int, shuffle: bool, consumer: int, num_consumers: int
) -> np.ndarray:
    """(m, 3) int64 rows ``(shard, start, stop)`` of the blocks one consumer reads, in order."""
    rows = []
    for s, n in enumerate(shard_counts):
        starts = np.arange(0, n, block_size, dtype=np.int64)
        rows.append(np.stack([np.full_like(starts, s), starts, np.minimum(starts + block_size, n)], axis=1))
    blocks = np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)
    if shuffle and len(blocks):
        blocks = blocks[derive_rng(seed, epoch).permutation(len(blocks))]
    return blocks[consumer::num_consumers]


def epoch_batches(
    store,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
    worker_id: int = 0,
    num_workers: int = 1,
    start_batch: int = 0,
    buffer_size: int = 1 << 18,
    block_size: int = 4096,
    drop_last: bool = False,
) -> Iterator[TripletBatch]:
    """One epoch of ``store`` as ``TripletBatch`` es; the arguments are those of ``fastalign.triplets.stream``."""
    batch_size = _check_int("batch_size", batch_size, 1)
    seed, epoch = _check_int("seed", seed, 0), _check_int("epoch", epoch, 0)
    world_size, num_workers = _check_int("world_size", world_size, 1), _check_int("num_workers", num_workers, 1)
    rank, worker_id = _check_int("rank", rank, 0), _check_int("worker_id", worker_id, 0)
    if rank >= world_size or worker_id >= num_workers:
        raise ValueError(f"need rank < world_size and worker_id < num_workers, got {rank}/{world_size}, {worker_id}/{num_workers}")
    start_batch = _check_int("start_batch", start_batch, 0)
    block_size = _check_int("block_size", block_size, 1)
    buffer_size = _check_int("buffer_size", buffer_size, 1)
    return _iterate(store, batch_size, seed, epoch, bool(shuffle), rank * num_workers + worker_id,
                    world_size * num_workers, start_batch, buffer_size, block_size, bool(drop_last))


def _iterate(store, batch_size, seed, epoch, shuffle, consumer, num_consumers, start_batch, buffer_size, block_size, drop_last):
    blocks = consumer_blocks([s.count for s in store.shards], block_size, seed, epoch, shuffle, consumer, num_consumers)
    per_window = max(1, buffer_size // block_size)
    sizes = blocks[:, 2] - blocks[:, 1]
    total = int(sizes.sum())
    n_windows = (len(blocks) + per_window - 1) // per_window
    win_sizes = np.add.reduceat(sizes, np.arange(0, len(blocks), per_window)) if len(blocks) else np.zeros(0, np.int64)
    win_starts = np.concatenate([[0], np.cumsum(win_sizes)]).astype(np.int64)
    pos = start_batch * batch_size
    if pos >= total:
        return
    with_probs = store.probs is not None
    w = int(np.searchsorted(win_starts, pos, side="right")) - 1
    # Carry-over rows of a batch that spans two windows.
    carry: List[np.ndarray] = []
    carried = 0
    while w < n_windows:
        idx, sm, pr = _read_window(store, blocks[w * per_window: (w + 1) * per_window], with_probs)
        if shuffle:
            perm = derive_rng(seed, epoch, consumer, w).permutation(idx.shape[0])
            idx, sm = idx[perm], sm[perm]
            pr = pr[perm] if with_probs else None
        lo = pos - int(win_starts[w])
        hi_window = idx.shape[0]
        while lo < hi_window:
            take = min(batch_size - carried, hi_window - lo)
            carry.append(np.arange(lo, lo + take))
            carried += take
            lo += take
            pos += take
            if carried == batch_size:
                yield _make_batch(idx, sm, pr, carry, with_probs)
                carry, carried = [], 0
        # Rows of a batch spanning windows: materialise them before the window is dropped.
        carry = [p if isinstance(p, _Rows) else _Rows(idx[p], sm[p], pr[p] if with_probs else None) for p in carry]
        w += 1
    if carried and not drop_last:
        yield _make_batch(None, None, None, carry, with_probs)


class _Rows:
    """Rows already gathered from an earlier window."""

    def __init__(self, idx, sm, pr):
        self.idx, self.sm, self.pr = idx, sm, pr


def _make_batch(idx, sm, pr, parts, with_probs) -> TripletBatch:
    i_parts, s_parts, p_parts = [], [], []
    for part in parts:
        if isinstance(part, _Rows):
            i_parts.append(part.idx)
            s_parts.append(part.sm)
            p_parts.append(part.pr)
        else:
            i_parts.append(idx[part])
            s_parts.append(sm[part])
            p_parts.append(pr[part] if with_probs else None)
    cat = lambda xs: xs[0] if len(xs) == 1 else np.concatenate(xs)  # noqa: E731
    trip = torch.from_numpy(cat(i_parts).astype(np.int64))
    sims = torch.from_numpy(cat(s_parts).astype(np.float32))
    probs = torch.from_numpy(cat(p_parts).astype(np.float32)) if with_probs else None
    return TripletBatch(trip, sims, probs)


def _read_window(store, blocks: np.ndarray, with_probs: bool):
    n = int((blocks[:, 2] - blocks[:, 1]).sum())
    idx = np.empty((n, 3), dtype=np.int32)
    sm = np.empty((n, 3), dtype=store.sims.dtype)
    pr = np.empty((n, 3), dtype=np.float32) if with_probs else None
    at = 0
    for s, a, b in blocks.tolist():
        shard = store.shards[s]
        m = b - a
        idx[at: at + m] = shard.indices[a:b]
        sm[at: at + m] = shard.sims[a:b]
        if with_probs:
            pr[at: at + m] = shard.probs[a:b]
        at += m
    return idx, sm, pr


def count_batches(shard_counts: List[int], batch_size: int, *, rank: int = 0, world_size: int = 1, worker_id: int = 0,
                  num_workers: int = 1, seed: int = 0, epoch: int = 0, shuffle: bool = True, block_size: int = 4096,
                  drop_last: bool = False) -> int:
    """Number of batches ``epoch_batches`` yields for one consumer with these arguments."""
    c, nc = rank * num_workers + worker_id, world_size * num_workers
    blocks = consumer_blocks(shard_counts, block_size, seed, epoch, shuffle, c, nc)
    total = int((blocks[:, 2] - blocks[:, 1]).sum())
    return total // batch_size if drop_last else -(-total // batch_size)
