"""The triplet-dense setting: ``DenseTripletSampler``.

Each step draws ``num_items`` distinct items and ``num_triplets`` triplets
among them and labels them on the fly with the teacher embeddings
(``fastalign.triplet_similarities``). Deterministic in (seed, step, rank), so
resuming needs only the step number. (Streamed sources, a triplet store or
``ArrayTripletSource``, are in ``fastalign.distill.source``.)
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..common.seeds import derive_seed
from ..ops import triplet_similarities
from ..triplets import TripletBatch
from .source import ArrayTripletSource  # noqa: F401  (re-exported: it lived here)


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
        gen = torch.Generator().manual_seed(derive_seed(seed, step, rank, 0xD15))
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
        return TripletBatch(triplets=trip, sims=sims, probs=None)
