"""The teacher: an affine transform of frozen features fitted to human odd-one-out choices.

- ``fit_transform``: one fit with the search over lambda (arrays in, transform and report out);
- ``fit_teacher``: the whole ``fastalign fit-teacher`` flow (inputs named as ``things:KEY`` or
  files, calibration, soft targets, metrics), with ``write_outputs`` for its files;
- ``save_transform`` / ``load_transform``: transform files (``.npz``, gLocal keys, or ``.safetensors``).
"""

from ..common.calibration import expected_calibration_error, mean_entropy
from .calibrate import CalibrationResult, UncertaintyMetrics, calibrate_temperature, uncertainty_metrics
from .fit import fit_transform
from .objective import ObjectiveConfig, local_loss, regulariser
from .options import FitConfig
from .plots import plot_lambda_search
from .results import CandidateResult, FitReport
from .soft import SoftTargets, choice_distributions, model_targets, soft_targets
from .split import Split, kfold_splits, train_val_split
from .transform import AffineTransform
from .transform_file import TRANSFORM_FORMATS, load_transform, save_transform
from .workflow import (
    TeacherFitResult,
    TeacherInputs,
    TeacherOptions,
    fit_teacher,
    load_inputs,
    run_teacher,
    write_outputs,
)

__all__ = [
    "TRANSFORM_FORMATS",
    "AffineTransform",
    "CalibrationResult",
    "CandidateResult",
    "FitConfig",
    "FitReport",
    "ObjectiveConfig",
    "SoftTargets",
    "Split",
    "TeacherFitResult",
    "TeacherInputs",
    "TeacherOptions",
    "UncertaintyMetrics",
    "calibrate_temperature",
    "choice_distributions",
    "expected_calibration_error",
    "fit_teacher",
    "fit_transform",
    "kfold_splits",
    "load_inputs",
    "load_transform",
    "local_loss",
    "mean_entropy",
    "model_targets",
    "plot_lambda_search",
    "regulariser",
    "run_teacher",
    "save_transform",
    "soft_targets",
    "train_val_split",
    "uncertainty_metrics",
    "write_outputs",
]
