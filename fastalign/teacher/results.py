"""What a teacher fit reports: one entry per hyper-parameter setting, and the whole fit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..common.jsonsafe import json_safe

__all__ = ["CandidateResult", "FitReport"]


@dataclass
class CandidateResult:
    """Held-out numbers of one hyper-parameter setting (means over folds)."""

    lam: float
    alpha: float
    tau: float
    val_loss: float
    val_accuracy: float
    fold_val_losses: List[float]
    fold_val_accuracies: List[float]
    iterations: List[int]
    seconds: float


@dataclass
class FitReport:
    """What ``fit_transform`` did; ``to_dict()`` is JSON-serialisable.

    Attributes:
        candidates: one entry per (lambda, alpha, tau) searched.
        chosen: the winning ``{"lam", "alpha", "tau"}`` (lowest held-out loss).
        final: numbers of the returned model: ``train_loss``, ``val_loss``,
            ``val_accuracy``, ``iterations``, ``evaluations``, ``stopped_early``.
        n_train, n_val, n_dropped: triplet counts of the final split.
        split, folds, optimizer, reg, loss: how it was fitted ("hard" or "kl").
        seconds: wall time of the whole search and refit.
        config: the ``FitConfig`` used, as a dict.
        calibration, extra: left for callers to fill.
    """

    candidates: List[CandidateResult]
    chosen: Dict[str, float]
    final: Dict[str, Any]
    n_train: int
    n_val: int
    n_dropped: int
    split: str
    folds: int
    optimizer: str
    reg: str
    loss: str
    seconds: float
    config: Dict[str, Any] = field(default_factory=dict)
    calibration: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return json_safe(self)
