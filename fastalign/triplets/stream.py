"""Shuffled, resumable, rank- and worker-sharded streaming over a ``TripletStore``.

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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Union

import numpy as np
import torch

from .store import TripletStore


@dataclass
class TripletBatch:
    """One batch ready for the loss.

    Attributes:
        triplets: (b, 3) int64 item indices, the teacher's odd one out last.
        sims: (b, 3) float32 teacher similarities ``[s01, s02, s12]``.
        probs: (b, 3) float32 teacher probabilities, or None when the store has none.
    """

    triplets: torch.Tensor
    sims: torch.Tensor
    probs: Optional[torch.Tensor]

    def __len__(self) -> int:
        return int(self.triplets.shape[0])

    def to(self, device, non_blocking: bool = False) -> "TripletBatch":
        """The batch on ``device``."""
        mv = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return TripletBatch(mv(self.triplets), mv(self.sims), mv(self.probs))


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(key))))


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
        blocks = blocks[_rng(seed, epoch).permutation(len(blocks))]
    return blocks[consumer::num_consumers]


def stream(
    store: TripletStore,
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
    """Iterate over one epoch of ``store`` as ``TripletBatch`` es.

    Args:
        store: an open ``TripletStore``.
        batch_size: triplets per batch (the last may be short unless ``drop_last``).
        seed, epoch: the shuffle is a function of both; change ``epoch`` every epoch.
        shuffle: False reads blocks in store order with no in-buffer shuffle.
        rank, world_size: this process's place among distributed ranks.
        worker_id, num_workers: this DataLoader worker's place within the rank.
        start_batch: skip this many batches of this consumer (resume mid-epoch).
        buffer_size: triplets held for the in-buffer shuffle (rounded down to
            whole blocks, at least one block); memory is about 2x this many rows.
        block_size: contiguous triplets read at a time (the unit of shard-level shuffling).
        drop_last: drop a final short batch.
    """
    if not isinstance(store, TripletStore):
        raise TypeError(f"store must be a TripletStore, got {type(store).__name__}")
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
            perm = _rng(seed, epoch, consumer, w).permutation(idx.shape[0])
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


def _read_window(store: TripletStore, blocks: np.ndarray, with_probs: bool):
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


def num_batches(store: TripletStore, batch_size: int, *, rank: int = 0, world_size: int = 1, worker_id: int = 0,
                num_workers: int = 1, seed: int = 0, epoch: int = 0, shuffle: bool = True, block_size: int = 4096,
                drop_last: bool = False) -> int:
    """Number of batches ``stream`` yields for one consumer with these arguments."""
    c, nc = rank * num_workers + worker_id, world_size * num_workers
    blocks = consumer_blocks([s.count for s in store.shards], block_size, seed, epoch, shuffle, c, nc)
    total = int((blocks[:, 2] - blocks[:, 1]).sum())
    return total // batch_size if drop_last else -(-total // batch_size)


def _dist_env() -> tuple:
    """(rank, world_size) from an initialised torch.distributed group, else $RANK/$WORLD_SIZE, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # pragma: no cover - distributed not built
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class TripletStreamDataset(torch.utils.data.IterableDataset):
    """A ``torch.utils.data.IterableDataset`` over a store, yielding ``TripletBatch`` es.

    Use with ``DataLoader(ds, batch_size=None, num_workers=W)``: each worker
    reads ``get_worker_info()`` and streams its own disjoint share. The store
    is opened lazily in each worker (memory maps do not survive pickling).

    Args:
        path: store directory.
        batch_size, seed, shuffle, buffer_size, block_size, drop_last: as in ``stream``.
        rank, world_size: None takes them from torch.distributed or $RANK/$WORLD_SIZE.
        verify: verify checksums when opening (once per worker).
    """

    def __init__(self, path: Union[str, os.PathLike], batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 rank: Optional[int] = None, world_size: Optional[int] = None, buffer_size: int = 1 << 18,
                 block_size: int = 4096, drop_last: bool = False, verify: bool = False) -> None:
        super().__init__()
        self.path = str(path)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        env_rank, env_world = _dist_env()
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        self.buffer_size = buffer_size
        self.block_size = block_size
        self.drop_last = drop_last
        self.verify = verify
        self.epoch = 0
        self.start_batch = 0
        self._store: Optional[TripletStore] = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (and a per-worker batch to resume from) for the next iteration."""
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    def __iter__(self) -> Iterator[TripletBatch]:
        info = torch.utils.data.get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        if self._store is None:
            self._store = TripletStore.open(self.path, verify=self.verify)
        return stream(self._store, self.batch_size, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle,
                      rank=self.rank, world_size=self.world_size, worker_id=worker_id, num_workers=num_workers,
                      start_batch=self.start_batch, buffer_size=self.buffer_size, block_size=self.block_size,
                      drop_last=self.drop_last)
