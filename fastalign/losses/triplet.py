"""Drop-in loss modules, configured in ``__init__`` and called like
``torch.nn.CrossEntropyLoss``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

from ..ops import registry, triplet_distill_loss, triplet_loss, validate


@dataclass(frozen=True)
class TripletLossOptions:
    """Options shared by the triplet losses, checked when the loss is built.

    Attributes:
        temperature: student softmax temperature, a Python number > 0.
        similarity: "dot" or "cosine".
        reduction: "mean" (sum of weighted losses / B), "sum" or "none" (B,).
        backend: None ($FASTALIGN_BACKEND or "auto"), "auto" or a registered backend
            ("torch", "cpu", "triton", "cuda"); see ``fastalign.backends()``.
        check_finite: raise ``ValueError`` on NaN/Inf in ``emb`` (one extra read of it).
    """

    temperature: float = 1.0
    similarity: str = "dot"
    reduction: str = "mean"
    backend: Optional[str] = None
    check_finite: bool = False

    def __post_init__(self):
        validate.check_temperature("temperature", self.temperature)
        validate.check_option("similarity", self.similarity, validate.SIMILARITIES)
        validate.check_option("reduction", self.reduction, validate.REDUCTIONS)
        registry.check_name(self.backend)


class TripletLoss(torch.nn.Module):
    """Hard odd-one-out loss ``-log q[c]`` on human choices (``fastalign.triplet_loss``).

    ``loss = TripletLoss()(emb, triplets, odd=None, weight=None)``; column 2 of
    ``triplets`` is the odd one out unless ``odd`` says otherwise.

    Args:
        temperature, similarity, reduction, backend, check_finite: see
            ``TripletLossOptions``; checked here, not at the first call.

    ``forward(emb, triplets, odd=None, weight=None)``: ``emb`` (N, D) float
    embeddings, ``triplets`` (B, 3) int32/int64 rows, ``odd`` optional (B,)
    positions {0, 1, 2} of the odd one out, ``weight`` optional (B,) finite
    weights >= 0. Returns a scalar, or (B,) with ``reduction="none"``.
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
    """KL or JSD between teacher and student odd-one-out distributions (``fastalign.triplet_distill_loss``).

    ``loss = TripletDistillLoss(divergence="jsd", temperature=100)(emb, triplets, target_sims=s)``.
    AligNet's released configuration is JSD at temperature 100.

    Args:
        divergence: "kl" for KL(p || q) or "jsd" for the Jensen-Shannon divergence.
        temperature: student temperature, a Python number > 0.
        teacher_temperature: applied to ``target_sims`` (> 0); unused with ``target_probs``.
        similarity, reduction, backend, check_finite: see ``TripletLossOptions``.

    ``forward(emb, triplets, target_probs=None, target_sims=None, weight=None)``:
    exactly one target, (B, 3) in pair order ``[s01, s02, s12]``: teacher
    probabilities (rows summing to 1) or teacher similarities.
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
