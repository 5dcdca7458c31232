"""``TripletBatch``: the one batch type of triplets with teacher targets (store streams, in-memory
sources and dense samplers all yield it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class TripletBatch:
    """One batch ready for the loss.

    Attributes:
        triplets: (b, 3) int64 item indices, the teacher's odd one out last.
        sims: (b, 3) float32 teacher similarities ``[s01, s02, s12]``, or None when a
            source has only hard labels.
        probs: (b, 3) float32 teacher probabilities, or None when the source has none.
    """

    triplets: torch.Tensor
    sims: Optional[torch.Tensor]
    probs: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.triplets.shape[0])

    def to(self, device, non_blocking: bool = False) -> "TripletBatch":
        """The batch on ``device``."""
        def mv(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return TripletBatch(mv(self.triplets), mv(self.sims), mv(self.probs))
