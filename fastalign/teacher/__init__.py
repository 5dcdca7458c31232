"""The teacher: an affine transform of frozen features fitted to human odd-one-out choices.

- ``fit_transform``: one fit with the search over lambda (arrays in, transform and report out);
- ``fit_teacher``: the whole ``fastalign fit-teacher`` flow (inputs named as ``things:KEY`` or
  files, calibration, soft targets, metrics), with ``write_outputs`` for its files;
- ``dense_targets`` + ``fit_dense``: AligNet's teacher: KL to a human similarity model's choice
  distributions on triplets sampled over all objects, lambda chosen by held-out human NLL;
- ``save_transform`` / ``load_transform``: transform files (``.npz``, gLocal keys, or ``.safetensors``).
"""

from ..common.calibration import expected_calibration_error, mean_entropy
from .calibrate import CalibrationResult, UncertaintyMetrics, calibrate_temperature, uncertainty_metrics
from .dense import DenseOptions, DenseTargets, dense_targets, embedding_targets, sample_triplets
from .dense_fit import DenseCandidate, DenseFitConfig, DenseFitReport, fit_dense, next_lambda
from .fit import fit_transform
from .objective import ObjectiveConfig, local_loss, regulariser
from .options import FitConfig
from .pairs import PairKL, pair_kl
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
    "DenseCandidate",
    "DenseFitConfig",
    "DenseFitReport",
    "DenseOptions",
    "DenseTargets",
    "FitConfig",
    "FitReport",
    "ObjectiveConfig",
    "PairKL",
    "SoftTargets",
    "Split",
    "TeacherFitResult",
    "TeacherInputs",
    "TeacherOptions",
    "UncertaintyMetrics",
    "calibrate_temperature",
    "choice_distributions",
    "dense_targets",
    "embedding_targets",
    "expected_calibration_error",
    "fit_dense",
    "fit_teacher",
    "fit_transform",
    "kfold_splits",
    "load_inputs",
    "load_transform",
    "local_loss",
    "mean_entropy",
    "model_targets",
    "next_lambda",
    "pair_kl",
    "plot_lambda_search",
    "regulariser",
    "run_teacher",
    "sample_triplets",
    "save_transform",
    "soft_targets",
    "train_val_split",
    "uncertainty_metrics",
    "write_outputs",
]
