"""Loss modules built on the triplet ops."""

from .triplet import TripletDistillLoss, TripletLoss, TripletLossOptions

__all__ = ["TripletDistillLoss", "TripletLoss", "TripletLossOptions"]
