"""fastalign: fast human-aligned representation learning (AligNet).

Conventions: a triplet row ``(i, j, k)`` lists the odd one out last; pair
similarities are ``[s01, s02, s12]``; ``softmax(s / T)[0]`` is the probability
that item 2 is the odd one out.
"""

from ._version import __version__
from .losses import TripletDistillLoss, TripletLoss, TripletLossOptions
from .ops import (
    affine_transform,
    backends,
    odd_one_out_accuracy,
    odd_one_out_probs,
    register_backend,
    triplet_distill_loss,
    triplet_loss,
    triplet_similarities,
)

__all__ = [
    "TripletDistillLoss",
    "TripletLoss",
    "TripletLossOptions",
    "__version__",
    "affine_transform",
    "backends",
    "odd_one_out_accuracy",
    "odd_one_out_probs",
    "register_backend",
    "triplet_distill_loss",
    "triplet_loss",
    "triplet_similarities",
]
