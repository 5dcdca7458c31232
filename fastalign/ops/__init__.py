"""One contract, one dispatch: validation, the backend registry and the
``torch.library`` registration of the triplet ops."""

from ..kernels.contract import acc_dtype  # the accumulation-dtype rule, for layers above ops
from . import backends as _builtin_backends  # noqa: F401  (registers the built-in backends)
from .affine import affine_transform, fold_affine
from .inversions import count_inversions
from .registry import backends, register_backend
from .triplet import (
    odd_one_out_accuracy,
    odd_one_out_probs,
    triplet_distill_loss,
    triplet_loss,
    triplet_similarities,
)

__all__ = [
    "acc_dtype",
    "affine_transform",
    "backends",
    "count_inversions",
    "fold_affine",
    "odd_one_out_accuracy",
    "odd_one_out_probs",
    "register_backend",
    "triplet_distill_loss",
    "triplet_loss",
    "triplet_similarities",
]
