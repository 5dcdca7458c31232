"""``torch.library`` registration of the triplet ops.

Each op is a ``custom_op`` with a fake (meta) implementation and a registered
autograd formula, so ``torch.compile`` traces through a model that uses the
losses without graph breaks; the kernels run as opaque calls. The data checks
of ``validate`` run inside the op implementations for the same reason.

Ops
---
- ``fastalign::triplet_similarities(emb, triplets, cosine, backend) -> sims``
- ``fastalign::triplet_scatter(emb, triplets, coef, cosine, backend) -> grad``
- ``fastalign::triplet_objective(emb, triplets, target, choice, weight, mode,
  cosine, temperature, reduction, backend, want_grad, check_finite)
  -> (loss, dsim, grad)``

``triplet_objective`` runs the fused forward+backward kernel when the loss is
reduced ("mean"/"sum") and a gradient is wanted: the (N, D) gradient for a unit
upstream gradient is computed in the forward pass and only scaled in backward,
so the rows are read once per training step instead of twice. For
``reduction="none"`` the upstream gradient is per triplet, so backward runs the
scatter kernel with ``coef = grad_out * weight * dsim``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..kernels.contract import acc_dtype
from . import validate
from .registry import resolve

REDUCTION_CODES = {"mean": 0, "sum": 1, "none": 2}
_MEAN, _SUM, _NONE = 0, 1, 2


def _kernels(backend: str, device: torch.device):
    return resolve(None if backend == "" else backend, device)


# ------------------------------------------------------------- similarities


@torch.library.custom_op("fastalign::triplet_similarities", mutates_args=())
def triplet_similarities_op(emb: torch.Tensor, triplets: torch.Tensor, cosine: bool, backend: str) -> torch.Tensor:
    validate.check_index_range(triplets, emb.shape[0])
    return _kernels(backend, emb.device).similarities(emb, triplets, cosine)


@triplet_similarities_op.register_fake
def _(emb, triplets, cosine, backend):
    return emb.new_empty((triplets.shape[0], 3), dtype=acc_dtype(emb.dtype))


@torch.library.custom_op("fastalign::triplet_scatter", mutates_args=())
def triplet_scatter_op(
    emb: torch.Tensor, triplets: torch.Tensor, coef: torch.Tensor, cosine: bool, backend: str
) -> torch.Tensor:
    return _kernels(backend, emb.device).scatter(emb, triplets, coef.contiguous(), cosine)


@triplet_scatter_op.register_fake
def _(emb, triplets, coef, cosine, backend):
    return emb.new_empty(emb.shape, dtype=acc_dtype(emb.dtype))


def _sims_setup(ctx, inputs, output):
    emb, triplets, cosine, backend = inputs
    ctx.save_for_backward(emb, triplets)
    ctx.cosine, ctx.backend = cosine, backend


def _sims_backward(ctx, grad_sims):
    emb, triplets = ctx.saved_tensors
    coef = grad_sims.to(acc_dtype(emb.dtype))
    grad = triplet_scatter_op(emb, triplets, coef, ctx.cosine, ctx.backend)
    return grad.to(emb.dtype), None, None, None


triplet_similarities_op.register_autograd(_sims_backward, setup_context=_sims_setup)


# ---------------------------------------------------------------- objective


def _rowscale(weight: Optional[torch.Tensor], reduction: int, b: int, acc: torch.dtype):
    """Per-row gradient factor and global factor of the reduced loss."""
    grad_scale = 1.0 / b if (reduction == _MEAN and b > 0) else 1.0
    return (None if weight is None else weight.to(acc)), grad_scale


@torch.library.custom_op("fastalign::triplet_objective", mutates_args=())
def triplet_objective_op(
    emb: torch.Tensor,
    triplets: torch.Tensor,
    target: Optional[torch.Tensor],
    choice: Optional[torch.Tensor],
    weight: Optional[torch.Tensor],
    mode: int,
    cosine: bool,
    temperature: float,
    reduction: int,
    backend: str,
    want_grad: bool,
    check_finite: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = triplets.shape[0]
    acc = acc_dtype(emb.dtype)
    validate.check_index_range(triplets, emb.shape[0])
    if choice is not None:
        validate.check_choice_range("odd", 2 - choice)
    if target is not None:
        validate.check_probs(target, target.dtype)
    if weight is not None:
        validate.check_weights(weight)
    if check_finite:
        validate.check_finite("emb", emb)
    kernels = _kernels(backend, emb.device)
    rowscale, grad_scale = _rowscale(weight, reduction, b, acc)
    fuse_grad = want_grad and reduction != _NONE
    loss, dsim, grad = kernels.fused(
        emb,
        triplets,
        None if target is None else target.to(acc).contiguous(),
        None if choice is None else choice.long().contiguous(),
        rowscale,
        mode,
        cosine,
        temperature,
        grad_scale,
        fuse_grad,
    )
    weighted = loss if weight is None else loss * weight.to(acc)
    if reduction == _NONE:
        out = weighted
    elif b == 0:
        out = loss.new_zeros(())  # documented: the loss of no triplets is 0
    else:
        out = weighted.sum() / b if reduction == _MEAN else weighted.sum()
    return out, dsim, grad


@triplet_objective_op.register_fake
def _(emb, triplets, target, choice, weight, mode, cosine, temperature, reduction, backend, want_grad, check_finite):
    acc = acc_dtype(emb.dtype)
    b = triplets.shape[0]
    out = emb.new_empty((b,) if reduction == _NONE else (), dtype=acc)
    dsim = emb.new_empty((b, 3), dtype=acc)
    fuse_grad = want_grad and reduction != _NONE
    grad = emb.new_empty(emb.shape if fuse_grad else (0,), dtype=acc)
    return out, dsim, grad


def _objective_setup(ctx, inputs, output):
    emb, triplets, _, _, weight, _, cosine, _, reduction, backend, _, _ = inputs
    _, dsim, grad = output
    ctx.cosine, ctx.backend, ctx.reduction = cosine, backend, reduction
    ctx.has_weight = weight is not None
    ctx.emb_dtype = emb.dtype
    # Only kernels with a scale_ method (the cpu backend) take the in-place
    # path; the GPU backends keep grad * grad_out.
    ctx.scale_in_place = reduction != _NONE and hasattr(_kernels(backend, emb.device), "scale_")
    ctx.scaled = ctx.handed_out = False
    # dsim and grad are outputs nobody differentiates; materialized, their
    # "gradients" would be a zero (B, 3) and a zero (N, D) tensor per backward.
    ctx.set_materialize_grads(False)
    if reduction == _NONE:
        ctx.save_for_backward(emb, triplets, dsim, weight if weight is not None else dsim.new_empty(0))
    else:
        ctx.save_for_backward(grad)


@torch.library.custom_op("fastalign::triplet_grad_scale_", mutates_args=("grad",))
def triplet_grad_scale_op(grad: torch.Tensor, scale: torch.Tensor, backend: str) -> None:
    """``grad *= scale`` in place, ``scale`` a 0-d tensor whose value the kernel reads."""
    _scale_in_place(grad, scale, backend)


@triplet_grad_scale_op.register_fake
def _(grad, scale, backend):
    return None


def _scale_in_place(grad: torch.Tensor, scale: torch.Tensor, backend: str) -> bool:
    """Scale the fused gradient in place; True when its values changed (scale != 1)."""
    kernels = _kernels(backend, grad.device)
    scale_ = getattr(kernels, "scale_", None)
    if scale_ is not None:
        return bool(scale_(grad, scale))
    grad.mul_(scale.to(grad.dtype))
    return True


def _objective_backward(ctx, grad_out, _grad_dsim, _grad_grad):
    if grad_out is None:  # only dsim or grad was used downstream: neither carries a gradient
        return (None,) * 12
    if ctx.reduction != _NONE:
        (grad,) = ctx.saved_tensors
        if grad.numel() == 0:  # no gradient was requested in forward
            return (None,) * 12
        if grad_out.dim() == 0 and ctx.scale_in_place:
            # A reduced loss's upstream gradient is a scalar (known from its
            # shape, so tracing takes no data-dependent branch): the kernel
            # scales the fused gradient, which only this node holds, in place
            # instead of allocating grad * grad_out, and skips the pass when
            # the scale is 1. Under torch.compile the op is functionalized
            # like any in-place op.
            if torch.compiler.is_compiling():
                triplet_grad_scale_op(grad, grad_out, ctx.backend)
            elif ctx.scaled:
                raise RuntimeError(
                    "backward ran twice through a retained graph of a reduced fastalign loss whose first "
                    "upstream gradient was not 1: its fused gradient was scaled in place then; "
                    "evaluate the loss again instead")
            elif ctx.handed_out:
                # A retained graph's later backward: the buffer went to the
                # caller the first time (still unscaled), so copy.
                return ((grad * grad_out.to(grad.dtype)).to(ctx.emb_dtype),) + (None,) * 11
            else:
                ctx.scaled = _scale_in_place(grad, grad_out, ctx.backend)
                ctx.handed_out = True
            grad_emb = grad if grad.dtype == ctx.emb_dtype else grad.to(ctx.emb_dtype)
            return (grad_emb,) + (None,) * 11
        grad_emb = (grad * grad_out.to(grad.dtype)).to(ctx.emb_dtype)
    else:
        emb, triplets, dsim, weight = ctx.saved_tensors
        coef = dsim * grad_out.to(dsim.dtype)[:, None]
        if ctx.has_weight:
            coef = coef * weight.to(dsim.dtype)[:, None]
        grad_emb = triplet_scatter_op(emb, triplets, coef, ctx.cosine, ctx.backend).to(ctx.emb_dtype)
    return (grad_emb,) + (None,) * 11


triplet_objective_op.register_autograd(_objective_backward, setup_context=_objective_setup)
