"""Odd-one-out accuracy and its noise-ceiling-normalised score."""

from __future__ import annotations

import math
from typing import Any, Optional

from ..common.tensors import as_emb, as_index, as_triplets
from ..ops import odd_one_out_accuracy

__all__ = ["CHANCE", "DEFAULT_CEILING", "noise_ceiling_normalized", "triplet_accuracy"]

CHANCE = 1.0 / 3.0
# Human noise ceiling on THINGS odd-one-out triplets (Hebart et al., 2020: about 67 %).
DEFAULT_CEILING = 0.67


def triplet_accuracy(
    emb: Any,
    triplets: Any,
    odd: Optional[Any] = None,
    similarity: str = "dot",
    backend: Optional[str] = None,
) -> float:
    """Odd-one-out accuracy (ties count as wrong) with the fused op.

    Args:
        emb: (N, D) embeddings (numpy or torch; the computation runs on its device).
        triplets: (B, 3) object indices; column 2 is the odd one out unless ``odd`` is given.
        odd: optional (B,) positions {0, 1, 2} of the odd one out.
        similarity: ``"dot"`` or ``"cosine"``.
        backend: kernel backend (see ``fastalign.backends()``); ``None`` picks one.

    Returns a float, NaN when there are no triplets.
    """
    e = as_emb(emb)
    t = as_triplets(triplets, e.shape[0], e.device)
    o = None if odd is None else as_index(odd, "odd", e.device)
    return odd_one_out_accuracy(e, t, odd=o, similarity=similarity, backend=backend)


def noise_ceiling_normalized(acc: float, ceiling: float = DEFAULT_CEILING) -> float:
    """``(acc - 1/3) / (ceiling - 1/3)``: 0 at chance, 1 at the human noise ceiling.

    Args:
        acc: odd-one-out accuracy in [0, 1] (NaN passes through).
        ceiling: the human noise ceiling, > 1/3 and <= 1.
    """
    c = float(ceiling)
    if not (CHANCE < c <= 1.0):
        raise ValueError(f"ceiling must lie in (1/3, 1], got {ceiling!r}")
    a = float(acc)
    if math.isnan(a):
        return a
    return (a - CHANCE) / (c - CHANCE)
