"""The public triplet ops: one contract, one dispatch.

Conventions (fixed for every backend):

- a triplet row ``(i, j, k)`` lists the odd one out last;
- pair similarities come as ``s = [s01, s02, s12]``;
- ``q = softmax(s / temperature)``; ``q[0]`` is P(item 2 is the odd one out).

Outputs (similarities, probabilities, losses) are float32, or float64 when
``emb`` is float64. Gradients reach ``emb`` in ``emb.dtype``, accumulated in
float32 (float64 for float64). Targets, weights and ``odd`` get no gradient.

Empty input (B = 0): similarities and probabilities are (0, 3); a "mean" or
"sum" loss is 0 with a zero gradient; ``odd_one_out_accuracy`` is NaN.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from ..kernels.contract import MODES
from . import registry, validate
from .library import REDUCTION_CODES, triplet_objective_op, triplet_similarities_op

Backend = Optional[str]


def _prepare(emb: torch.Tensor, triplets: torch.Tensor):
    validate.check_emb(emb)
    validate.check_triplets(triplets, emb)
    # Kernels need unit stride along D; the row stride may be anything.
    if emb.stride(1) != 1:
        emb = emb.contiguous()
    return emb, triplets.contiguous()


def _backend_arg(backend: Backend) -> str:
    registry.check_name(backend)
    return "" if backend is None else backend


def _cosine(similarity: str) -> bool:
    validate.check_option("similarity", similarity, validate.SIMILARITIES)
    return similarity == "cosine"


def _choice(odd: Optional[torch.Tensor], b: int, device: torch.device) -> Optional[torch.Tensor]:
    """Convert odd-one-out positions to chosen-pair indices: odd 2 -> pair 0 (s01)."""
    if odd is None:
        return None
    validate.check_choice("odd", odd, b, device)
    return 2 - odd.long()


def triplet_similarities(
    emb: torch.Tensor, triplets: torch.Tensor, similarity: str = "dot", backend: Backend = None
) -> torch.Tensor:
    """Pair similarities ``[s01, s02, s12]`` of each triplet, shape (B, 3).

    Args:
        emb: (N, D) embeddings.
        triplets: (B, 3) int32/int64 row indices into ``emb``.
        similarity: ``"dot"`` or ``"cosine"``.
        backend: ``None`` (``$FASTALIGN_BACKEND`` or "auto"), "auto", "torch", "cpu", "triton", "cuda".
    """
    emb, triplets = _prepare(emb, triplets)
    return triplet_similarities_op(emb, triplets, _cosine(similarity), _backend_arg(backend))


def odd_one_out_probs(
    emb: torch.Tensor,
    triplets: torch.Tensor,
    temperature: float = 1.0,
    similarity: str = "dot",
    backend: Backend = None,
) -> torch.Tensor:
    """``softmax(s / temperature)`` over ``[s01, s02, s12]``, shape (B, 3).

    Column 0 is P(item 2 is the odd one out), column 1 P(item 1), column 2 P(item 0).

    Args:
        emb: (N, D) embeddings.
        triplets: (B, 3) int32/int64 row indices into ``emb``.
        temperature: softmax temperature, a Python number > 0.
        similarity: "dot" or "cosine".
        backend: see ``triplet_similarities``.
    """
    t = validate.check_temperature("temperature", temperature)
    sims = triplet_similarities(emb, triplets, similarity, backend)
    return torch.softmax(sims / t, dim=1)


def triplet_loss(
    emb: torch.Tensor,
    triplets: torch.Tensor,
    odd: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    similarity: str = "dot",
    reduction: str = "mean",
    weight: Optional[torch.Tensor] = None,
    backend: Backend = None,
    check_finite: bool = False,
) -> torch.Tensor:
    """Hard odd-one-out loss ``-log q[c]`` on human choices.

    Args:
        emb: (N, D) embeddings.
        triplets: (B, 3) row indices; by default column 2 is the odd one out.
        odd: optional (B,) positions {0, 1, 2} of the odd one out instead.
        temperature: softmax temperature, a Python number > 0 (a tensor is refused: it would be
            detached silently).
        similarity: "dot" or "cosine".
        reduction: "mean" (sum of weighted losses / B), "sum" or "none" (B,).
        weight: optional (B,) per-triplet weights, finite and >= 0 (else ValueError).
        backend: see ``triplet_similarities``.
        check_finite: raise ``ValueError`` on NaN/Inf in ``emb`` instead of
            propagating it to the loss.
    """
    emb, triplets = _prepare(emb, triplets)
    b = triplets.shape[0]
    t = validate.check_temperature("temperature", temperature)
    validate.check_option("reduction", reduction, validate.REDUCTIONS)
    validate.check_rows("weight", weight, b, emb.device, None)
    choice = _choice(odd, b, emb.device)
    want_grad = torch.is_grad_enabled() and emb.requires_grad
    out, _, _ = triplet_objective_op(
        emb, triplets, None, choice, weight, MODES["hard"], _cosine(similarity), t, 0.0,
        REDUCTION_CODES[reduction], _backend_arg(backend), want_grad, check_finite,
    )
    return out


def triplet_distill_loss(
    emb: torch.Tensor,
    triplets: torch.Tensor,
    target_probs: Optional[torch.Tensor] = None,
    target_sims: Optional[torch.Tensor] = None,
    teacher_temperature: float = 1.0,
    temperature: float = 1.0,
    divergence: str = "kl",
    similarity: str = "dot",
    reduction: str = "mean",
    weight: Optional[torch.Tensor] = None,
    backend: Backend = None,
    check_finite: bool = False,
) -> torch.Tensor:
    """Soft-target distillation loss between teacher ``p`` and student ``q``.

    Args:
        emb: (N, D) student embeddings.
        triplets: (B, 3) row indices.
        target_probs: (B, 3) teacher probabilities in pair order ``[p01, p02, p12]``: entries >= 0,
            rows summing to 1 within ``validate.PROB_SUM_TOL`` of their dtype (1e-6 for float64,
            so float32-rounded probabilities stored as float64 pass; 1e-4 float32; 5e-3 float16; 2e-2 bfloat16).
        target_sims: (B, 3) teacher similarities; then
            ``p = softmax(target_sims / teacher_temperature)``. Give exactly one target.
        teacher_temperature: temperature for ``target_sims``, > 0.
        temperature: student temperature, > 0.
        divergence: "kl" for KL(p || q), "jsd" for the Jensen-Shannon divergence.
        similarity, reduction, weight, backend, check_finite: as in ``triplet_loss``.
    """
    emb, triplets = _prepare(emb, triplets)
    b = triplets.shape[0]
    t = validate.check_temperature("temperature", temperature)
    validate.check_option("divergence", divergence, validate.DIVERGENCES)
    validate.check_option("reduction", reduction, validate.REDUCTIONS)
    validate.check_rows("weight", weight, b, emb.device, None)
    if (target_probs is None) == (target_sims is None):
        raise ValueError("give exactly one of target_probs and target_sims")
    if target_sims is not None:
        validate.check_rows("target_sims", target_sims, b, emb.device, 3)
        # The op softmaxes the similarities itself, after checking them under their own name.
        tt = validate.check_temperature("teacher_temperature", teacher_temperature)
        target = target_sims.detach()
    else:
        validate.check_rows("target_probs", target_probs, b, emb.device, 3)
        tt, target = 0.0, target_probs.detach()
    want_grad = torch.is_grad_enabled() and emb.requires_grad
    out, _, _ = triplet_objective_op(
        emb, triplets, target, None, weight, MODES[divergence], _cosine(similarity), t, tt,
        REDUCTION_CODES[reduction], _backend_arg(backend), want_grad, check_finite,
    )
    return out


def odd_one_out_accuracy(
    emb: torch.Tensor,
    triplets: torch.Tensor,
    odd: Optional[torch.Tensor] = None,
    similarity: str = "dot",
    backend: Backend = None,
    reduction: str = "mean",
) -> Union[float, torch.Tensor]:
    """Fraction of triplets whose chosen pair has the strictly largest similarity.

    Args:
        emb: (N, D) embeddings.
        triplets: (B, 3) row indices; column 2 is the odd one out unless ``odd`` is given.
        odd: optional (B,) positions {0, 1, 2} of the odd one out.
        similarity: "dot" or "cosine".
        backend: see ``triplet_similarities``.
        reduction: "mean" for a float (NaN when B = 0), "none" for the (B,) bool
            correctness per triplet.

    Ties count as wrong. A triplet whose similarities are NaN or Inf (an embedding
    row with NaN or Inf) raises ``ValueError`` instead of counting as wrong.
    """
    validate.check_option("reduction", reduction, ("mean", "none"))
    with torch.no_grad():
        sims = triplet_similarities(emb, triplets, similarity, backend)
        b = sims.shape[0]
        # NaN compares false, so a NaN row would count as a tie (wrong) and give a plausible accuracy.
        validate.check_finite_sims(sims, triplets)
        choice = _choice(odd, b, sims.device)
        if choice is not None:
            validate.check_choice_range("odd", odd)
        if choice is None:
            chosen = sims[:, 0]
            others = sims[:, 1:].amax(dim=1)
        else:
            chosen = sims.gather(1, choice[:, None]).squeeze(1)
            masked = sims.scatter(1, choice[:, None], float("-inf"))
            others = masked.amax(dim=1)
        correct = chosen > others
    if reduction == "none":
        return correct
    return float("nan") if b == 0 else int(correct.sum()) / b
