"""Where a step's triplets come from.

- ``ArrayTripletSource``: triplets held in memory, with the ``TripletStore.stream``
  interface (shuffled per epoch, sharded over ranks and workers, resumable at
  ``start_batch``). The loop reads a store and this the same way.
- ``DenseTripletSampler``: the triplet-dense setting. Each step draws
  ``num_items`` distinct items and ``num_triplets`` triplets among them and
  labels them on the fly with the teacher embeddings
  (``fastalign.triplet_similarities``). Deterministic in (seed, step, rank), so
  resuming needs only the step number.
- ``human_triplet_rows``: hard human triplets from a THINGS-format file or the
  bundled splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch

from ..ops import triplet_similarities

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden ratio: decorrelates (seed, epoch, ...) tuples


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike ``hash``)."""
    h = 0x12345678
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * _MIX + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


@dataclass
class TripletBatch:
    """One batch from a source: (b, 3) int64 ``triplets``, (b, 3) float32 ``sims``,
    optional (b, 3) ``probs`` (same fields as the store's batches)."""

    triplets: torch.Tensor
    sims: Optional[torch.Tensor]
    probs: Optional[torch.Tensor] = None


class ArrayTripletSource:
    """Teacher-labelled triplets in memory, streamed like a ``TripletStore``.

    Args:
        triplets: (M, 3) int item indices, odd one out last.
        sims: (M, 3) teacher similarities, or None when ``probs`` is given.
        probs: (M, 3) teacher probabilities, or None.
        num_items: number of items (default: max index + 1).
        manifest: metadata (e.g. ``{"temperature": 1.0, "file_names": [...]}``).
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
            gen = torch.Generator().manual_seed(mix_seed(seed, epoch))
            order = torch.randperm(m, generator=gen)
        else:
            order = torch.arange(m)
        order = order[rank::world_size][worker_id::num_workers]
        for start in range(start_batch * batch_size, order.shape[0], batch_size):
            idx = order[start:start + batch_size]
            yield TripletBatch(self.triplets[idx], None if self.sims is None else self.sims[idx],
                               None if self.probs is None else self.probs[idx])


class DenseTripletSampler:
    """Triplet-dense batches: ``num_triplets`` triplets among ``num_items`` items.

    Args:
        teacher: (N, Dt) teacher embeddings used to label triplets.
        num_items: distinct items per step (per rank).
        num_triplets: triplets per step (per rank), drawn uniformly among the
            step's items (three distinct items each).
        similarity: "dot" or "cosine" for the teacher similarities.
        items: optional (K,) item pool to draw from (e.g. the training split).
        backend: triplet op backend.
    """

    def __init__(self, teacher, num_items: int, num_triplets: int, similarity: str = "dot",
                 items=None, backend: Optional[str] = None):
        self.teacher = torch.as_tensor(np.asarray(teacher), dtype=torch.float32)
        if self.teacher.dim() != 2:
            raise ValueError(f"teacher embeddings must be (N, D), got shape {tuple(self.teacher.shape)}")
        self.pool = (torch.arange(self.teacher.shape[0]) if items is None
                     else torch.as_tensor(np.asarray(items), dtype=torch.int64))
        if num_items < 3 or num_items > self.pool.shape[0]:
            raise ValueError(f"num_items must be in [3, {self.pool.shape[0]}], got {num_items}")
        if num_triplets <= 0:
            raise ValueError(f"num_triplets must be > 0, got {num_triplets}")
        self.num_items = int(num_items)
        self.num_triplets = int(num_triplets)
        self.similarity = similarity
        self.backend = backend

    @property
    def num_teacher_items(self) -> int:
        return int(self.teacher.shape[0])

    def sample(self, step: int, *, seed: int = 0, rank: int = 0) -> TripletBatch:
        """The batch of ``step`` on ``rank``: global item ids and teacher similarities."""
        gen = torch.Generator().manual_seed(mix_seed(seed, step, rank, 0xD15))
        chosen = self.pool[torch.randperm(self.pool.shape[0], generator=gen)[: self.num_items]]
        k = self.num_items
        # Three distinct positions per triplet: a, then b != a, then c not in {a, b}
        # (shift-by-offset keeps each uniform over the allowed positions).
        a = torch.randint(0, k, (self.num_triplets,), generator=gen)
        b = (a + torch.randint(1, k, (self.num_triplets,), generator=gen)) % k
        c = torch.randint(0, k - 2, (self.num_triplets,), generator=gen)
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        c = c + (c >= lo).long()
        c = c + (c >= hi).long()
        local = torch.stack([a, b, c], dim=1)
        trip = chosen[local]
        sims = triplet_similarities(self.teacher, trip, self.similarity, self.backend).float()
        return TripletBatch(trip, sims, None)


def human_triplet_rows(spec: str) -> np.ndarray:
    """(H, 3) int64 human triplets (odd one out last) from ``"things:<split>"`` or
    a whitespace-separated text file with 3 (or 4, participant last) columns."""
    if spec.startswith("things:"):
        from ..datasets.things import load_things

        key = spec.split(":", 1)[1]
        trips = load_things().triplets
        if key not in trips:
            raise ValueError(f"unknown bundled triplets {key!r}; known: {', '.join(sorted(trips))}")
        return np.array(trips[key], dtype=np.int64)  # a writable copy (the bundled arrays are read-only)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"human triplet file not found: {path}")
    try:
        table = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: not a table of integer triplets: {exc}") from None
    if table.shape[1] not in (3, 4):
        raise ValueError(f"{path}: expected 3 or 4 columns, got {table.shape[1]}")
    return np.ascontiguousarray(table[:, :3])
