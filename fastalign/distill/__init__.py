"""Stage 3 of AligNet: distil a student on teacher-labelled triplets.

``distill(config) -> DistillResult`` runs the memory-efficient loop (two-pass
gradient-cached steps, decay-to-init Adam, checkpoints, metrics); see
``fastalign.distill.loop`` for single- and multi-node commands.
"""

from ..triplets import TripletBatch
from .checkpoint import CorruptCheckpoint, load_checkpoint
from .config import (
    DataConfig,
    DistillConfig,
    EvalConfig,
    LossConfig,
    OptimConfig,
    StudentConfig,
    TrainConfig,
    config_from_dict,
    load_config,
)
from .evaluation import embed_items
from .export import embed_checkpoint, embed_student
from .loop import DistillResult, TrainingDiverged, distill
from .optim import DecayToInitAdam, lr_at
from .sampler import DenseTripletSampler
from .source import ArrayTripletSource, TripletSource
from .step import StepBatch, StepOptions, StepResult, single_pass_step, two_pass_step
from .student import FeatureStudent, Student, build_student, make_head

__all__ = [
    "CorruptCheckpoint",
    "TrainingDiverged",
    "ArrayTripletSource", "DataConfig", "DecayToInitAdam", "DenseTripletSampler", "DistillConfig", "DistillResult",
    "EvalConfig", "FeatureStudent", "LossConfig", "OptimConfig", "StepBatch", "StepOptions", "StepResult",
    "Student", "StudentConfig", "TrainConfig", "TripletBatch", "TripletSource", "build_student", "config_from_dict", "distill",
    "embed_checkpoint", "embed_items", "embed_student", "load_checkpoint", "load_config", "lr_at", "make_head",
    "single_pass_step", "two_pass_step",
]
