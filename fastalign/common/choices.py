"""Human choice distributions from repeated responses to the same object set.

Teacher fitting (soft targets) and evaluation (agreement with human uncertainty)
both need them, so they are computed here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np
import torch

from .tensors import as_index

__all__ = ["RepeatedTriplets", "aggregate_triplets", "choice_distributions"]


@dataclass(frozen=True)
class RepeatedTriplets:
    """Responses grouped by object set.

    Attributes:
        triplets: (U, 3) int64 object ids, each row sorted ascending.
        counts: (U, 3) int64 responses per pair, pair order ``[s01, s02, s12]`` of
            the sorted row (choosing pair p as most similar = object ``2 - p`` odd).
    """

    triplets: torch.Tensor
    counts: torch.Tensor

    @property
    def n(self) -> torch.Tensor:
        """(U,) responses per object set."""
        return self.counts.sum(1)

    @property
    def distribution(self) -> torch.Tensor:
        """(U, 3) float64 human choice probabilities in pair order."""
        return self.counts.to(torch.float64) / self.n[:, None].to(torch.float64)


def aggregate_triplets(triplets: Any, odd: Optional[Any] = None) -> RepeatedTriplets:
    """Group responses by their (unordered) object set.

    Args:
        triplets: (B, 3) object indices, column 2 the odd one out unless ``odd`` is given.
        odd: optional (B,) positions {0, 1, 2} of the odd one out.

    Raises ValueError on a row that repeats an object (it has no odd one out).
    """
    t = as_index(triplets, "triplets", width=3)
    if t.numel() and int(t.min()) < 0:
        raise ValueError("triplets must hold non-negative object indices")
    b = t.shape[0]
    if odd is None:
        odd_pos = torch.full((b,), 2, dtype=torch.int64, device=t.device)
    else:
        odd_pos = as_index(odd, "odd", t.device)
        if odd_pos.shape != (b,):
            raise ValueError(f"odd must have shape ({b},), got {tuple(odd_pos.shape)}")
        if b and bool(((odd_pos < 0) | (odd_pos > 2)).any()):
            raise ValueError("odd must hold positions in {0, 1, 2}")
    srt, _ = torch.sort(t, dim=1)
    dup = (srt[:, 0] == srt[:, 1]) | (srt[:, 1] == srt[:, 2])
    if bool(dup.any()):
        row = int(dup.nonzero()[0, 0])
        raise ValueError(f"triplets row {row} = {t[row].tolist()} repeats an object")
    odd_id = t.gather(1, odd_pos[:, None])
    pos_sorted = (srt == odd_id).long().argmax(1)  # where the odd object sits in the sorted row
    pair = 2 - pos_sorted
    n_obj = int(t.max()) + 1 if b else 1
    if n_obj ** 3 < 2**62:
        key = (srt[:, 0] * n_obj + srt[:, 1]) * n_obj + srt[:, 2]
        _, inv = torch.unique(key, return_inverse=True)
    else:  # ids too large for one int64 key
        _, inv = torch.unique(srt, dim=0, return_inverse=True)
    u = int(inv.max()) + 1 if b else 0
    counts = torch.bincount(inv * 3 + pair, minlength=3 * u).reshape(u, 3)
    rows = torch.empty((u, 3), dtype=torch.int64, device=t.device)
    rows[inv] = srt
    return RepeatedTriplets(rows, counts)


def choice_distributions(triplets: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`aggregate_triplets` as numpy arrays, for fitting code.

    Args:
        triplets: (k, 3) responses, column 2 the odd one out chosen by a person.

    Returns:
        ``unique`` (U, 3): each object set once, objects sorted ascending;
        ``probs`` (U, 3) float64 in pair order of ``unique`` (rows sum to 1);
        ``counts`` (U,) number of responses per set.
    """
    agg = aggregate_triplets(triplets)
    return agg.triplets.cpu().numpy(), agg.distribution.cpu().numpy(), agg.n.cpu().numpy()
