"""Drop-in loss modules, configured in ``__init__`` and called like
``torch.nn.CrossEntropyLoss``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

from ..ops import triplet_distill_loss, triplet_loss, validate


@dataclass(frozen=True)
class TripletLossOptions:
    """Options shared by the triplet losses (see ``fastalign.triplet_loss``)."""

    temperature: float = 1.0
    similarity: str = "dot"
    reduction: str = "mean"
    backend: Optional[str] = None
    check_finite: bool = False

    def __post_init__(self):
        validate.check_temperature("temperature", self.temperature)
        validate.check_option("similarity", self.similarity, validate.SIMILARITIES)
        validate.check_option("reduction", self.reduction, validate.REDUCTIONS)


class TripletLoss(torch.nn.Module):
    """Hard odd-one-out loss on human choices.

    ``loss = TripletLoss()(emb, triplets, odd=None, weight=None)``; column 2 of
    ``triplets`` is the odd one out unless ``odd`` says otherwise.
    """

    def __init__(self, temperature: float = 1.0, similarity: str = "dot", reduction: str = "mean",
                 backend: Optional[str] = None, check_finite: bool = False):
        super().__init__()
        self.options = TripletLossOptions(temperature, similarity, reduction, backend, check_finite)

    def forward(self, emb: torch.Tensor, triplets: torch.Tensor, odd: Optional[torch.Tensor] = None,
                weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        return triplet_loss(emb, triplets, odd=odd, weight=weight, **asdict(self.options))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in asdict(self.options).items())


class TripletDistillLoss(torch.nn.Module):
    """KL or JSD between teacher and student odd-one-out distributions.

    ``loss = TripletDistillLoss(divergence="jsd", temperature=100)(emb, triplets, target_sims=s)``.
    AligNet's released configuration is JSD at temperature 100.
    """

    def __init__(self, divergence: str = "kl", temperature: float = 1.0, teacher_temperature: float = 1.0,
                 similarity: str = "dot", reduction: str = "mean", backend: Optional[str] = None,
                 check_finite: bool = False):
        super().__init__()
        validate.check_option("divergence", divergence, validate.DIVERGENCES)
        validate.check_temperature("teacher_temperature", teacher_temperature)
        self.divergence = divergence
        self.teacher_temperature = float(teacher_temperature)
        self.options = TripletLossOptions(temperature, similarity, reduction, backend, check_finite)

    def forward(self, emb: torch.Tensor, triplets: torch.Tensor, target_probs: Optional[torch.Tensor] = None,
                target_sims: Optional[torch.Tensor] = None, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        return triplet_distill_loss(
            emb, triplets, target_probs=target_probs, target_sims=target_sims,
            teacher_temperature=self.teacher_temperature, divergence=self.divergence, weight=weight,
            **asdict(self.options),
        )

    def extra_repr(self) -> str:
        opts = {"divergence": self.divergence, "teacher_temperature": self.teacher_temperature, **asdict(self.options)}
        return ", ".join(f"{k}={v!r}" for k, v in opts.items())
