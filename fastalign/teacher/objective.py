"""The teacher's objective: human triplet loss + local (gLocal) term + regulariser.

``total = (1 - alpha) * global + alpha * local + lambda * reg(W)`` where

- ``global`` is the hard odd-one-out loss on human choices (dot similarity,
  column 2 the odd one out), or with soft targets the KL divergence to
  per-triplet choice distributions; both through the fused triplet ops;
- ``local`` (gLocal) is the soft-target cross-entropy between the row-softmaxes
  (temperature ``tau``, diagonal removed) of the cosine similarities of the
  untransformed and the transformed features of an extra unlabelled batch;
- ``reg`` is ``||W - mean(diag W) I||_F^2`` ("identity", the default: it pulls W
  towards a scaled identity, leaving the overall scale free) or ``||W||_F^2`` ("l2").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch

from ..ops import triplet_distill_loss, triplet_loss
from .pairs import PairKL, pair_kl
from .transform import AffineTransform

REGULARISERS = ("identity", "l2")


@dataclass(frozen=True)
class ObjectiveConfig:
    """Hyper-parameters of one objective.

    Attributes:
        lam: regulariser weight lambda >= 0.
        reg: "identity" (``||W - mean(diag W) I||_F^2``) or "l2" (``||W||_F^2``).
        alpha: weight of the local term in [0, 1); 0 disables it.
        tau: softmax temperature of the local term, > 0.
    """

    lam: float = 1e-1
    reg: str = "identity"
    alpha: float = 0.0
    tau: float = 1.0

    def __post_init__(self) -> None:
        if self.reg not in REGULARISERS:
            raise ValueError(f"reg must be one of {list(REGULARISERS)}, got {self.reg!r}")
        if not (self.lam >= 0):
            raise ValueError(f"lambda must be >= 0, got {self.lam!r}")
        if not (0.0 <= self.alpha < 1.0):
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha!r}")
        if not (self.tau > 0):
            raise ValueError(f"tau must be > 0, got {self.tau!r}")


def regulariser(W: torch.Tensor, kind: str = "identity") -> torch.Tensor:
    """``||W - mean(diag W) I||_F^2`` ("identity") or ``||W||_F^2`` ("l2").

    For a rectangular W (D, D') the identity is ``eye(D, D')`` and the diagonal
    its ``min(D, D')`` leading entries.
    """
    if kind == "l2":
        return (W * W).sum()
    if kind != "identity":
        raise ValueError(f"reg must be one of {list(REGULARISERS)}, got {kind!r}")
    diag = W.diagonal()
    c = diag.mean()
    # ||W - cI||^2 = ||W||^2 - 2c tr(W) + c^2 k  (k = min(D, D')); with c = tr(W)/k this is
    # ||W||^2 - tr(W)^2 / k. Written as the off-diagonal plus centred-diagonal sums for accuracy.
    off = (W * W).sum() - (diag * diag).sum()
    return off + ((diag - c) ** 2).sum()


def _cosine_logits(x: torch.Tensor, tau: float) -> torch.Tensor:
    """Row-wise cosine similarities / tau with the diagonal removed: (M, M-1)."""
    u = torch.nn.functional.normalize(x, dim=1)
    s = (u @ u.T) / tau
    m = s.shape[0]
    # Drop the diagonal: view the (M, M) matrix without its M diagonal entries.
    return s.flatten()[1:].view(m - 1, m + 1)[:, :-1].reshape(m, m - 1)


def local_loss(x_raw: torch.Tensor, z: torch.Tensor, tau: float) -> torch.Tensor:
    """gLocal's local term: mean over rows of ``-sum_j p_ij log q_ij`` where
    ``p = softmax(cos(x_raw) / tau)`` (target, no gradient) and
    ``q = softmax(cos(z) / tau)``, both with the diagonal removed.

    Args:
        x_raw: (M, D) untransformed features of the unlabelled batch (M >= 2).
        z: (M, D') the same rows transformed.
        tau: temperature > 0.
    """
    if x_raw.shape[0] != z.shape[0] or x_raw.shape[0] < 2:
        raise ValueError(f"local term needs the same M >= 2 rows before and after the transform, got {x_raw.shape[0]} and {z.shape[0]}")
    with torch.no_grad():
        p = torch.softmax(_cosine_logits(x_raw.to(z.dtype), tau), dim=1)
    logq = torch.log_softmax(_cosine_logits(z, tau), dim=1)
    return -(p * logq).sum(1).mean()


@dataclass
class Batch:
    """The data one objective evaluation sees.

    Attributes:
        x: (N, D) features the triplets index into.
        triplets: (B, 3) int64, column 2 the odd one out.
        target: optional (B, 3) soft targets ``[p01, p02, p12]``; None for hard labels.
        local_x: optional (M, D) unlabelled features for the local term.
        pairs: optional ``PairKL`` of the same triplets and targets: the KL is then read off
            the N x N similarity matrix (dense soft targets: many triplets, few objects).
        human: optional (H, 3) human triplets whose hard loss is added with ``human_weight``.
        human_weight: weight of the human term (dense fits; 0 = none).
    """

    x: torch.Tensor
    triplets: torch.Tensor
    target: Optional[torch.Tensor] = None
    local_x: Optional[torch.Tensor] = None
    pairs: Optional[PairKL] = None
    human: Optional[torch.Tensor] = None
    human_weight: float = 0.0


def triplet_term(z: torch.Tensor, triplets: torch.Tensor, target: Optional[torch.Tensor],
                 backend: Optional[str] = None) -> torch.Tensor:
    """Mean hard loss (``target`` None) or mean KL to ``target`` on transformed rows ``z``."""
    if target is None:
        return triplet_loss(z, triplets, backend=backend)
    return triplet_distill_loss(z, triplets, target_probs=target, divergence="kl", backend=backend)


def objective(
    transform: AffineTransform,
    batch: Batch,
    cfg: ObjectiveConfig,
    backend: Optional[str] = None,
    z: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """Evaluate the objective; returns ``{"total", "global", "local", "reg", "z"}``.

    ``z`` (the transformed ``batch.x``) may be passed in when already computed;
    otherwise all N rows are transformed once (never per triplet).
    """
    if z is None:
        z = transform(batch.x)
    if batch.pairs is not None:
        glob = pair_kl(z, batch.pairs)
    else:
        glob = triplet_term(z, batch.triplets, batch.target, backend)
    if batch.human is not None and batch.human_weight > 0:
        glob = glob + batch.human_weight * triplet_loss(z, batch.human, backend=backend)
    reg = regulariser(transform.weight, cfg.reg)
    total = glob + cfg.lam * reg
    loc = torch.zeros((), dtype=glob.dtype)
    if cfg.alpha > 0:
        if batch.local_x is None:
            raise ValueError("alpha > 0 needs local (unlabelled) features")
        loc = local_loss(batch.local_x, transform(batch.local_x), cfg.tau)
        total = (1 - cfg.alpha) * glob + cfg.alpha * loc + cfg.lam * reg
    return {"total": total, "global": glob, "local": loc, "reg": reg, "z": z}
