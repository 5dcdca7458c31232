"""Calibration of a representation's odd-one-out probabilities on human triplets, and its figure.

The metrics themselves (NLL, ECE with its binning rule, entropy, reliability bins) are defined
once in ``fastalign.common.calibration`` and re-exported here.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ..common.calibration import (
    DEFAULT_BINS,
    Reliability,
    calibration_metrics,
    expected_calibration_error,
    mean_entropy,
    nll,
    reliability,
)
from ..common.tensors import as_emb, as_index, as_triplets
from ..ops import odd_one_out_probs
from .reliability_plot import plot_reliability

__all__ = [
    "DEFAULT_BINS",
    "Reliability",
    "calibration_metrics",
    "expected_calibration_error",
    "mean_entropy",
    "nll",
    "plot_reliability",
    "reliability",
    "triplet_calibration",
]
def triplet_calibration(
    emb: Any,
    triplets: Any,
    odd: Optional[Any] = None,
    temperature: float = 1.0,
    similarity: str = "dot",
    n_bins: int = DEFAULT_BINS,
    backend: Optional[str] = None,
) -> Dict[str, float]:
    """Calibration metrics of ``softmax(s / temperature)`` on human triplets.

    Args:
        emb: (N, D) embeddings.
        triplets: (B, 3) indices, column 2 the odd one out unless ``odd`` is given.
        odd: optional (B,) odd-one-out positions.
        temperature: softmax temperature, > 0.
        similarity: ``"dot"`` or ``"cosine"``.
        n_bins: ECE bins.
        backend: kernel backend.
    """
    e = as_emb(emb)
    t = as_triplets(triplets, e.shape[0], e.device)
    with torch.no_grad():
        q = odd_one_out_probs(e, t, temperature=temperature, similarity=similarity, backend=backend)
    target = None if odd is None else 2 - as_index(odd, "odd", e.device)
    return calibration_metrics(q, target, n_bins)
