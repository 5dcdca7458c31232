"""Shuffled, resumable, rank- and worker-sharded streaming over a ``TripletStore``.

The epoch order itself (blocks, shard-level shuffle, consumers, in-buffer windows, batches;
a pure function of the arguments) is defined in ``fastalign.triplets.epoch``, which the
store's own ``TripletStore.stream`` also uses; this module adds the checks and the ``torch``
dataset on top.
"""

from __future__ import annotations

import os
from typing import Iterator, Optional, Union

import torch
import torch.distributed as dist

from .batch import TripletBatch
from .epoch import consumer_blocks, count_batches, epoch_batches
from .store import TripletStore

__all__ = ["TripletBatch", "TripletStreamDataset", "consumer_blocks", "num_batches", "stream"]


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
    return epoch_batches(store, batch_size, seed=seed, epoch=epoch, shuffle=shuffle, rank=rank, world_size=world_size,
                         worker_id=worker_id, num_workers=num_workers, start_batch=start_batch,
                         buffer_size=buffer_size, block_size=block_size, drop_last=drop_last)


def num_batches(store: TripletStore, batch_size: int, *, rank: int = 0, world_size: int = 1, worker_id: int = 0,
                num_workers: int = 1, seed: int = 0, epoch: int = 0, shuffle: bool = True, block_size: int = 4096,
                drop_last: bool = False) -> int:
    """Number of batches ``stream`` yields for one consumer with these arguments."""
    return count_batches([s.count for s in store.shards], batch_size, rank=rank, world_size=world_size,
                         worker_id=worker_id, num_workers=num_workers, seed=seed, epoch=epoch, shuffle=shuffle,
                         block_size=block_size, drop_last=drop_last)


def _dist_env() -> tuple:
    """(rank, world_size) from an initialised torch.distributed group, else $RANK/$WORLD_SIZE, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
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
