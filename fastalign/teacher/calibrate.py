"""Uncertainty of the teacher: temperature calibration and calibration metrics.

- ``calibrate_temperature`` fits one scalar T on held-out human triplets by
  minimising the NLL of their choices under ``softmax(s / T)``; it never
  returns a T whose NLL on that set is worse than T = 1.
- ``uncertainty_metrics`` reports NLL, expected calibration error (ECE over
  equal-width bins of the max probability; "correct" means the chosen pair has
  the largest probability) and mean entropy (nats).

ECE comes from ``fastalign.eval.calibration`` (one definition for the package).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch

from ..ops import odd_one_out_accuracy, odd_one_out_probs, triplet_loss

# Golden-section search on log T over this bracket; T outside it is never useful for
# triplet softmaxes (0.01: essentially argmax, 100: essentially uniform).
LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))
_GOLDEN = (math.sqrt(5) - 1) / 2


def expected_calibration_error(probs: torch.Tensor, choice: Optional[torch.Tensor] = None, bins: int = 15) -> float:
    """ECE over ``bins`` equal-width bins of the max probability.

    Delegates to ``fastalign.eval.calibration.expected_calibration_error`` so the
    package has one definition (bins ``(b/n, (b+1)/n]``; a row is correct when
    the chosen pair's probability is strictly the largest, ties wrong).

    Args:
        probs: (B, 3) probabilities in pair order ``[p01, p02, p12]``.
        choice: (B,) index of the human-chosen pair (``2 - odd``); None means 0
            (column 2 of the triplet is the odd one out).
        bins: number of bins in [0, 1].

    Returns ``sum_b (n_b / B) |acc_b - conf_b|``; NaN when B = 0.
    """
    # Imported here: fastalign.eval imports the teacher/io layer for its report helpers.
    from ..eval.calibration import expected_calibration_error as _ece

    if probs.dim() != 2 or probs.shape[1] != 3:
        raise ValueError(f"probs must have shape (B, 3), got {tuple(probs.shape)}")
    if probs.shape[0] == 0:
        return float("nan")
    return float(_ece(probs.detach(), None if choice is None else choice.long(), n_bins=bins))


def mean_entropy(probs: torch.Tensor) -> float:
    """Mean Shannon entropy (nats) of the rows of ``probs``; NaN when empty."""
    if probs.shape[0] == 0:
        return float("nan")
    p = probs.detach().double()
    return float(-(torch.xlogy(p, p)).sum(1).mean())


@dataclass
class UncertaintyMetrics:
    """Held-out calibration numbers (all means over triplets)."""

    nll: float
    ece: float
    entropy: float
    accuracy: float
    n: int

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def uncertainty_metrics(
    z: torch.Tensor,
    triplets: torch.Tensor,
    temperature: float = 1.0,
    bins: int = 15,
    backend: Optional[str] = None,
) -> UncertaintyMetrics:
    """NLL of the human choices, ECE and mean entropy of ``softmax(s / T)``, and the
    odd-one-out accuracy of the similarities (ties count as wrong).

    Args:
        z: (N, D) transformed features.
        triplets: (B, 3), column 2 the odd one out.
        temperature: softmax temperature T.
        bins: ECE bins.
        backend: triplet-op backend.
    """
    with torch.no_grad():
        q = odd_one_out_probs(z, triplets, temperature=temperature, backend=backend)
        nll = float(triplet_loss(z, triplets, temperature=temperature, backend=backend))
        # Accuracy from the similarities (ties wrong), so it never depends on the temperature.
        acc = float(odd_one_out_accuracy(z, triplets, backend=backend))
    return UncertaintyMetrics(nll=nll, ece=expected_calibration_error(q, bins=bins),
                              entropy=mean_entropy(q), accuracy=acc, n=int(triplets.shape[0]))


@dataclass
class CalibrationResult:
    """Outcome of temperature calibration on the calibration set.

    Attributes:
        temperature: the chosen T (1.0 when fitting did not lower the NLL).
        fitted_temperature: the minimiser found by the search.
        nll_before: NLL at T = 1; nll_after: NLL at the chosen T (<= nll_before).
        n: number of calibration triplets.
    """

    temperature: float
    fitted_temperature: float
    nll_before: float
    nll_after: float
    n: int

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def _nll(z: torch.Tensor, triplets: torch.Tensor, log_t: float, backend: Optional[str]) -> float:
    return float(triplet_loss(z, triplets, temperature=math.exp(log_t), backend=backend))


def calibrate_temperature(
    z: torch.Tensor,
    triplets: torch.Tensor,
    backend: Optional[str] = None,
    tol: float = 1e-4,
    bounds: Tuple[float, float] = LOG_T_BOUNDS,
) -> CalibrationResult:
    """Fit a scalar temperature T minimising the NLL of held-out human choices.

    The NLL of a softmax is convex in 1/T, hence unimodal in log T, so a
    golden-section search on log T finds the minimiser to ``tol``.

    Args:
        z: (N, D) transformed features (the teacher's output), no gradient needed.
        triplets: (B, 3) held-out triplets, column 2 the odd one out (B >= 1).
        backend: triplet-op backend.
        tol: tolerance on log T.
        bounds: search bracket on log T.
    """
    if triplets.shape[0] == 0:
        raise ValueError("temperature calibration needs at least one held-out triplet")
    z = z.detach()
    with torch.no_grad():
        nll1 = _nll(z, triplets, 0.0, backend)
        a, b = bounds
        c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
        fc, fd = _nll(z, triplets, c, backend), _nll(z, triplets, d, backend)
        while b - a > tol:
            if fc < fd:
                b, d, fd = d, c, fc
                c = b - _GOLDEN * (b - a)
                fc = _nll(z, triplets, c, backend)
            else:
                a, c, fc = c, d, fd
                d = a + _GOLDEN * (b - a)
                fd = _nll(z, triplets, d, backend)
        log_t = (a + b) / 2
        fit = _nll(z, triplets, log_t, backend)
    t_fit = math.exp(log_t)
    # Never make the calibration set worse than the uncalibrated model.
    if fit < nll1:
        return CalibrationResult(t_fit, t_fit, nll1, fit, int(triplets.shape[0]))
    return CalibrationResult(1.0, t_fit, nll1, nll1, int(triplets.shape[0]))
