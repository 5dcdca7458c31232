"""Uncertainty of the teacher: temperature calibration and calibration metrics.

- ``calibrate_temperature`` fits one scalar T on held-out human triplets by
  minimising the NLL of their choices under ``softmax(s / T)``; it never
  returns a T whose NLL on that set is worse than T = 1.
- ``uncertainty_metrics`` reports NLL, expected calibration error (ECE over
  equal-width bins of the max probability; "correct" means the chosen pair has
  the largest probability) and mean entropy (nats).

ECE, NLL and entropy come from ``fastalign.common.calibration`` (one definition for the package).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from ..common.calibration import DEFAULT_BINS, expected_calibration_error, mean_entropy
from ..ops import odd_one_out_accuracy, odd_one_out_probs, triplet_loss, triplet_similarities
from .search1d import bracket_midpoint

__all__ = [
    "LOG_T_BOUNDS",
    "CalibrationResult",
    "UncertaintyMetrics",
    "calibrate_temperature",
    "expected_calibration_error",
    "mean_entropy",
    "uncertainty_metrics",
]

# Golden-section search on log T over this bracket; T outside it is never useful for
# triplet softmaxes (0.01: essentially argmax, 100: essentially uniform).
LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))


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
    bins: int = DEFAULT_BINS,
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
    return UncertaintyMetrics(nll=nll, ece=expected_calibration_error(q, n_bins=bins),
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


def _nll_of_log_t(z: torch.Tensor, triplets: torch.Tensor, backend: Optional[str]) -> Callable[[float], float]:
    """NLL of the choices as a function of log T.

    One fused pass gives the similarities; each trial T then costs a float64 (B, 3)
    log-softmax. In float64 the NLL is smooth in T: float32 rounding would make it
    flat near the minimum, and the search would end anywhere on that plateau.
    """
    sims = triplet_similarities(z, triplets, backend=backend).double()
    return lambda log_t: float(-torch.log_softmax(sims / math.exp(log_t), dim=1)[:, 0].mean())


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
        nll = _nll_of_log_t(z, triplets, backend)
        nll1 = nll(0.0)
        log_t = bracket_midpoint(nll, *bounds, tol=tol)
        fit = nll(log_t)
    t_fit = math.exp(log_t)
    # Never make the calibration set worse than the uncalibrated model.
    if fit < nll1:
        return CalibrationResult(t_fit, t_fit, nll1, fit, int(triplets.shape[0]))
    return CalibrationResult(1.0, t_fit, nll1, nll1, int(triplets.shape[0]))
