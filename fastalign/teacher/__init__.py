"""The teacher: an affine transform of frozen features fitted to human odd-one-out choices."""

from .calibrate import (
    CalibrationResult,
    UncertaintyMetrics,
    calibrate_temperature,
    expected_calibration_error,
    mean_entropy,
    uncertainty_metrics,
)
from .fit import CandidateResult, FitConfig, FitReport, fit_transform
from .objective import ObjectiveConfig, local_loss, regulariser
from .soft import choice_distributions, model_targets
from .split import Split, kfold_splits, train_val_split
from .transform import AffineTransform

__all__ = [
    "AffineTransform",
    "CalibrationResult",
    "CandidateResult",
    "FitConfig",
    "FitReport",
    "ObjectiveConfig",
    "Split",
    "UncertaintyMetrics",
    "calibrate_temperature",
    "choice_distributions",
    "expected_calibration_error",
    "fit_transform",
    "kfold_splits",
    "local_loss",
    "mean_entropy",
    "model_targets",
    "regulariser",
    "train_val_split",
    "uncertainty_metrics",
]
