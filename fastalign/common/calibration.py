"""Calibration of odd-one-out probabilities: NLL, expected calibration error, entropy.

Targets are either hard human choices (the index of the chosen pair in pair
order ``[s01, s02, s12]``; for rows with the odd one out last that is 0) or
soft human choice distributions (B, 3) in the same pair order.

ECE uses ``DEFAULT_BINS = 15`` equal-width bins over the model's max
probability on [0, 1] (Guo et al., 2017); bin ``b`` holds confidences in
``(b/15, (b+1)/15]``, the first bin also 0. With three choices the max
probability is at least 1/3, so the lowest five bins stay empty. A
prediction is correct when the chosen pair's probability is strictly the
largest (ties wrong, as in ``odd_one_out_accuracy``); with soft targets the
"accuracy" of a row is the human probability of the model's top pair.
ECE = sum_b (n_b / n) |accuracy_b - confidence_b|.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .tensors import as_index

__all__ = [
    "DEFAULT_BINS",
    "Reliability",
    "calibration_metrics",
    "entropy",
    "expected_calibration_error",
    "mean_entropy",
    "nll",
    "reliability",
]

DEFAULT_BINS = 15


def _probs(probs: Any) -> torch.Tensor:
    if not isinstance(probs, torch.Tensor):
        probs = torch.from_numpy(np.array(probs, dtype=np.float64))
    if probs.dim() != 2 or probs.shape[1] != 3 or not probs.is_floating_point():
        raise ValueError(f"probs must be a floating (B, 3) array, got {tuple(probs.shape)} {probs.dtype}")
    return probs.to(torch.float64)


def _target(target: Any, b: int, device) -> torch.Tensor:
    """(B, 3) float64 target distribution from hard choices, soft rows or ``None`` (all pair 0)."""
    if target is None:
        t = torch.zeros((b, 3), dtype=torch.float64, device=device)
        t[:, 0] = 1.0
        return t
    if isinstance(target, torch.Tensor) and target.is_floating_point() or (
        hasattr(target, "dtype") and getattr(target.dtype, "kind", "") == "f"
    ):
        t = _probs(target).to(device)
        if t.shape[0] != b:
            raise ValueError(f"target has {t.shape[0]} rows, probs {b}")
        if b and (bool((t < 0).any()) or bool(((t.sum(1) - 1).abs() > 1e-6).any())):
            raise ValueError("soft targets must be probability rows (>= 0, summing to 1)")
        return t
    c = as_index(target, "target", device)
    if c.shape != (b,):
        raise ValueError(f"target must have shape ({b},) or ({b}, 3), got {tuple(c.shape)}")
    if b and bool(((c < 0) | (c > 2)).any()):
        raise ValueError("hard targets must be pair indices in {0, 1, 2}")
    return torch.nn.functional.one_hot(c, 3).to(torch.float64)


def nll(probs: Any, target: Any = None) -> float:
    """Mean negative log-likelihood (cross-entropy for soft targets) in nats.

    Args:
        probs: (B, 3) model probabilities in pair order.
        target: (B,) chosen pair indices, (B, 3) distributions, or ``None`` (pair 0).
    """
    q = _probs(probs)
    p = _target(target, q.shape[0], q.device)
    logq = torch.log(q.clamp_min(torch.finfo(torch.float64).tiny))
    return float(-(torch.where(p > 0, p * logq, torch.zeros_like(p))).sum(1).mean())


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Row entropies in nats with ``0 log 0 = 0``, in the dtype of ``p``."""
    logp = torch.where(p > 0, torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)), torch.zeros_like(p))
    return -(p * logp).sum(-1)


def mean_entropy(probs: Any) -> float:
    """Mean entropy of the rows of ``probs`` in nats (``0 log 0 = 0``); NaN when empty."""
    q = _probs(probs)
    return float(entropy(q).mean()) if q.shape[0] else float("nan")


@dataclass(frozen=True)
class Reliability:
    """Reliability-diagram data; lists have one entry per bin.

    Attributes:
        edges: the ``n_bins + 1`` bin edges on [0, 1].
        confidence: mean max probability per bin (``None`` when empty).
        accuracy: accuracy per bin (``None`` when empty).
        count: predictions per bin.
        ece: expected calibration error.
    """

    edges: List[float]
    confidence: List[Optional[float]]
    accuracy: List[Optional[float]]
    count: List[int]
    ece: float

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def reliability(probs: Any, target: Any = None, n_bins: int = DEFAULT_BINS) -> Reliability:
    """Bin predictions by confidence (see the module docstring).

    Args:
        probs: (B, 3) model probabilities in pair order.
        target: (B,) chosen pair indices, (B, 3) distributions, or ``None`` (pair 0).
        n_bins: number of equal-width bins on [0, 1], >= 1.
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    q = _probs(probs)
    p = _target(target, q.shape[0], q.device)
    conf, top = q.max(1)
    if p.shape[0]:
        hard = bool(((p == 0) | (p == 1)).all())
        if hard:
            chosen = p.argmax(1)
            qc = q.gather(1, chosen[:, None]).squeeze(1)
            others = q.scatter(1, chosen[:, None], float("-inf")).amax(1)
            correct = (qc > others).to(torch.float64)
        else:
            correct = p.gather(1, top[:, None]).squeeze(1)
    else:
        correct = conf
    idx = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    nonempty = count > 0
    mean_conf = torch.where(nonempty, conf_sum / count.clamp_min(1), torch.zeros_like(count))
    mean_acc = torch.where(nonempty, acc_sum / count.clamp_min(1), torch.zeros_like(count))
    total = float(count.sum())
    ece = float(((count / total) * (mean_acc - mean_conf).abs()).sum()) if total else float("nan")
    ne = nonempty.tolist()
    return Reliability(
        edges=[i / n_bins for i in range(n_bins + 1)],
        confidence=[float(v) if k else None for v, k in zip(mean_conf.tolist(), ne)],
        accuracy=[float(v) if k else None for v, k in zip(mean_acc.tolist(), ne)],
        count=[int(v) for v in count.tolist()],
        ece=ece,
    )


def expected_calibration_error(probs: Any, target: Any = None, n_bins: int = DEFAULT_BINS) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (default 15); see the module docstring."""
    return reliability(probs, target, n_bins).ece


def calibration_metrics(probs: Any, target: Any = None, n_bins: int = DEFAULT_BINS) -> Dict[str, float]:
    """``{"nll", "ece", "entropy", "n_bins"}`` of model probabilities against human choices."""
    return {
        "nll": nll(probs, target),
        "ece": expected_calibration_error(probs, target, n_bins),
        "entropy": mean_entropy(probs),
        "n_bins": n_bins,
    }
