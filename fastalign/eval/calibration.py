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
from ..teacher.calibrate import CalibrationResult, calibrate_temperature
from .reliability_plot import plot_reliability

__all__ = [
    "DEFAULT_BINS",
    "Reliability",
    "calibration_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "mean_entropy",
    "nll",
    "plot_reliability",
    "reliability",
    "triplet_calibration",
]

# The cosine kernels clamp each row's norm at this before dividing (tests/reference.py).
_COSINE_EPS = 1e-8


def fit_temperature(emb: Any, triplets: Any, similarity: str = "dot",
                    backend: Optional[str] = None) -> CalibrationResult:
    """The softmax temperature of a representation, fitted as the teacher's is.

    ``fastalign.teacher.calibrate_temperature`` (the NLL of the choices, golden-section search on
    log T, never worse than T = 1) on ``triplets``, so that every representation of a report is
    scored at a temperature fitted the same way on the same triplets.

    Args:
        emb: (N, D) embeddings.
        triplets: (B, 3) calibration triplets, column 2 the odd one out (B >= 1); never the
            triplets the calibration measures are then reported on.
        similarity: ``"dot"`` or ``"cosine"``.
        backend: kernel backend.
    """
    if similarity not in ("dot", "cosine"):
        raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
    e = as_emb(emb)
    t = as_triplets(triplets, e.shape[0], e.device)
    if similarity == "cosine":
        # Dot products of unit rows are the cosine kernels' similarities.
        e = e / e.norm(dim=1, keepdim=True).clamp_min(_COSINE_EPS)
    return calibrate_temperature(e, t, backend=backend)


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
