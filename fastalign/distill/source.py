"""What the distillation loop reads triplets from.

``TripletSource`` is the protocol: ``fastalign.triplets.TripletStore`` (a store
written by ``make-triplets``) and ``ArrayTripletSource`` (triplets in memory)
implement it. The loop reads nothing else of a source, so any object with these
members can feed it. (``DenseTripletSampler`` is the other kind of source: it
labels fresh triplets every step and is addressed by step, not streamed.)

The generation metadata (``meta``) carries what the loss needs to know about
the labels: the teacher ``temperature`` that turns similarities into
probabilities, and ``hard_labels`` for a store whose similarities are
placeholders (a THINGS text import: one-hot probabilities are the target).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional, Protocol, runtime_checkable

import numpy as np
import torch

from ..common.seeds import derive_seed
from ..triplets import TripletBatch


@runtime_checkable
class TripletSource(Protocol):
    """A finite set of teacher-labelled triplets, streamed in shuffled, sharded, resumable batches."""

    @property
    def num_items(self) -> int:
        """Number of items the triplet indices refer to."""

    @property
    def meta(self) -> Mapping[str, Any]:
        """Generation metadata (``temperature``, ``hard_labels``, ``file_names`` ...); may be empty."""

    @property
    def item_names(self) -> Optional[List[str]]:
        """One name per item (e.g. image file names) when the source records them, else None."""

    def stream(self, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True, rank: int = 0,
               world_size: int = 1, start_batch: int = 0) -> Iterator[TripletBatch]:
        """Batch ``start_batch`` onward of epoch ``epoch`` of this rank's shard (see ``fastalign.triplets.stream``)."""


def teacher_temperature(source: TripletSource) -> Optional[float]:
    """The temperature the source's similarities were labelled at (``meta["temperature"]``), or None."""
    value = source.meta.get("temperature")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def hard_labels(source: TripletSource) -> bool:
    """True when the similarities are placeholders and the probabilities are the target."""
    return bool(source.meta.get("hard_labels"))


class ArrayTripletSource:
    """Teacher-labelled triplets in memory, streamed like a ``TripletStore``.

    Args:
        triplets: (M, 3) int item indices, odd one out last.
        sims: (M, 3) teacher similarities, or None when ``probs`` is given.
        probs: (M, 3) teacher probabilities, or None.
        num_items: number of items (default: max index + 1).
        manifest: metadata (e.g. ``{"temperature": 1.0, "file_names": [...]}``); a nested
            ``"meta"`` table, as in a store's manifest, is read too.
    """

    def __init__(self, triplets, sims=None, probs=None, num_items: Optional[int] = None,
                 manifest: Optional[Dict[str, Any]] = None):
        self.triplets = torch.as_tensor(np.asarray(triplets), dtype=torch.int64)
        if self.triplets.dim() != 2 or self.triplets.shape[1] != 3:
            raise ValueError(f"triplets must have shape (M, 3), got {tuple(self.triplets.shape)}")
        if sims is None and probs is None:
            raise ValueError("give sims or probs")
        self.sims = None if sims is None else torch.as_tensor(np.asarray(sims), dtype=torch.float32)
        self.probs = None if probs is None else torch.as_tensor(np.asarray(probs), dtype=torch.float32)
        for name, arr in (("sims", self.sims), ("probs", self.probs)):
            if arr is not None and arr.shape != self.triplets.shape:
                raise ValueError(f"{name} must have shape {tuple(self.triplets.shape)}, got {tuple(arr.shape)}")
        top = int(self.triplets.max()) + 1 if len(self.triplets) else 0
        self.num_items = int(num_items) if num_items is not None else top
        if len(self.triplets) and (int(self.triplets.min()) < 0 or top > self.num_items):
            raise ValueError(f"triplet indices out of range: must be in [0, {self.num_items})")
        self.manifest = dict(manifest or {})

    def __len__(self) -> int:
        return int(self.triplets.shape[0])

    @property
    def meta(self) -> Dict[str, Any]:
        nested = self.manifest.get("meta")
        flat = {k: v for k, v in self.manifest.items() if k != "meta"}
        return {**nested, **flat} if isinstance(nested, dict) else flat

    @property
    def item_names(self) -> Optional[List[str]]:
        names = self.meta.get("file_names")
        return list(names) if isinstance(names, (list, tuple)) else None

    def stream(self, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True, rank: int = 0,
               world_size: int = 1, worker_id: int = 0, num_workers: int = 1,
               start_batch: int = 0) -> Iterator[TripletBatch]:
        """Batches of this rank's and worker's shard of one epoch.

        The epoch's permutation depends on (seed, epoch) only; rank ``r`` takes
        every ``world_size``-th row of it, so the ranks' batch ``i`` together
        are the rows a single process would see in its batch ``i`` at
        ``world_size`` times the batch size.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        m = len(self)
        if shuffle:
            gen = torch.Generator().manual_seed(derive_seed(seed, epoch))
            order = torch.randperm(m, generator=gen)
        else:
            order = torch.arange(m)
        order = order[rank::world_size][worker_id::num_workers]
        for start in range(start_batch * batch_size, order.shape[0], batch_size):
            idx = order[start:start + batch_size]
            yield TripletBatch(triplets=self.triplets[idx], sims=None if self.sims is None else self.sims[idx],
                               probs=None if self.probs is None else self.probs[idx])
