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
  cosine, temperature, teacher_temperature, reduction, backend, want_grad,
  check_finite)
  -> (loss, dsim, grad)``

``triplet_objective`` runs the fused forward+backward kernel when the loss is
reduced ("mean"/"sum") and a gradient is wanted: the (N, D) gradient for a unit
upstream gradient is computed in the forward pass and only scaled in backward,
so the rows are read once per training step instead of twice (a retained
graph's later backward runs the fused kernel again). For
``reduction="none"`` the upstream gradient is per triplet, so backward runs the
scatter kernel with ``coef = grad_out * weight * dsim``.

The ops are once differentiable: a backward with ``create_graph=True`` raises
instead of returning a gradient whose own gradient would silently be zero.
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
    _refuse_double_backward()
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


def _target_probs(target: Optional[torch.Tensor], teacher_temperature: float, acc: torch.dtype):
    """The teacher's probabilities: ``target`` itself, or ``softmax(target / T_teacher)`` when
    ``teacher_temperature > 0`` says it holds similarities."""
    if target is None:
        return None
    if teacher_temperature > 0:
        return torch.softmax(target.to(acc) / teacher_temperature, dim=1).contiguous()
    return target.to(acc).contiguous()


def _run_fused(emb, triplets, target, choice, weight, mode, cosine, temperature, teacher_temperature,
               reduction, backend, want_grad):
    acc = acc_dtype(emb.dtype)
    rowscale, grad_scale = _rowscale(weight, reduction, triplets.shape[0], acc)
    return _kernels(backend, emb.device).fused(
        emb,
        triplets,
        _target_probs(target, teacher_temperature, acc),
        None if choice is None else choice.long().contiguous(),
        rowscale,
        mode,
        cosine,
        temperature,
        grad_scale,
        want_grad,
    )


_NO_DOUBLE_BACKWARD = (
    "fastalign's triplet ops have no second derivative (their backward is a fused kernel): "
    "create_graph=True through them (double backward, a gradient penalty) is not supported"
)


def _refuse_double_backward() -> None:
    # The engine runs a backward with grad mode on exactly when create_graph=True. Without this
    # check the gradient would come back as a tensor whose own gradient is silently zero.
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError(_NO_DOUBLE_BACKWARD)


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
    teacher_temperature: float,
    reduction: int,
    backend: str,
    want_grad: bool,
    check_finite: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss of one of the ``MODES``, its ``dsim`` and (reduced, ``want_grad``) its fused gradient.

    ``target`` holds probabilities when ``teacher_temperature`` is 0, else the
    teacher's similarities (softmaxed here, so their check names them).
    """
    b = triplets.shape[0]
    acc = acc_dtype(emb.dtype)
    validate.check_index_range(triplets, emb.shape[0])
    if choice is not None:
        validate.check_choice_range("odd", 2 - choice)
    if target is not None:
        if teacher_temperature > 0:
            validate.check_sims("target_sims", target)
        else:
            validate.check_probs(target, target.dtype)
    if weight is not None:
        validate.check_weights(weight)
    if check_finite:
        validate.check_finite("emb", emb)
    fuse_grad = want_grad and reduction != _NONE
    loss, dsim, grad = _run_fused(emb, triplets, target, choice, weight, mode, cosine, temperature,
                                  teacher_temperature, reduction, backend, fuse_grad)
    weighted = loss if weight is None else loss * weight.to(acc)
    if reduction == _NONE:
        out = weighted
    elif b == 0:
        out = loss.new_zeros(())  # documented: the loss of no triplets is 0
    else:
        out = weighted.sum() / b if reduction == _MEAN else weighted.sum()
    return out, dsim, grad


@triplet_objective_op.register_fake
def _(emb, triplets, target, choice, weight, mode, cosine, temperature, teacher_temperature, reduction, backend,
      want_grad, check_finite):
    acc = acc_dtype(emb.dtype)
    b = triplets.shape[0]
    out = emb.new_empty((b,) if reduction == _NONE else (), dtype=acc)
    dsim = emb.new_empty((b, 3), dtype=acc)
    fuse_grad = want_grad and reduction != _NONE
    grad = emb.new_empty(emb.shape if fuse_grad else (0,), dtype=acc)
    return out, dsim, grad


def _objective_setup(ctx, inputs, output):
    emb, triplets, target, choice, weight, mode, cosine, temperature, teacher_temperature, reduction, backend, \
        _, _ = inputs
    _, dsim, grad = output
    ctx.cosine, ctx.backend, ctx.reduction = cosine, backend, reduction
    ctx.mode, ctx.temperature, ctx.teacher_temperature = mode, temperature, teacher_temperature
    ctx.has_weight = weight is not None
    ctx.emb_dtype = emb.dtype
    # dsim and grad are by-products: nothing differentiates them, and a
    # gradient taken with create_graph=True must not look differentiable.
    ctx.mark_non_differentiable(dsim, grad)
    # Unused outputs get no materialized zero "gradients" (a (B, 3) and an (N, D) tensor per backward).
    ctx.set_materialize_grads(False)
    if reduction == _NONE:
        ctx.save_for_backward(emb, triplets, dsim, weight if weight is not None else dsim.new_empty(0))
        return
    # Only kernels with a scale_ method (the cpu backend) take the in-place
    # path; the GPU backends keep grad * grad_out.
    ctx.scale_in_place = hasattr(_kernels(backend, emb.device), "scale_")
    # The fused gradient is held detached, not saved: the first backward hands
    # it to the caller (it becomes emb.grad, which the caller may zero or add
    # to), so a later backward through a retained graph must not read it and
    # recomputes it from the saved inputs instead. Detached, it holds no
    # reference back to this node, so an unused graph frees it.
    ctx.fused_grad = grad.detach()
    ctx.save_for_backward(emb, triplets, target, choice, weight)


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


def _fused_grad(ctx) -> torch.Tensor:
    """The unit-upstream gradient of a reduced loss.

    The forward's buffer, or for a retained graph's later backward (the buffer
    went to the caller) the same fused kernel run again on the saved inputs:
    deterministic, so the value is the forward's.
    """
    grad = ctx.fused_grad
    if grad is None:
        emb, triplets, target, choice, weight = ctx.saved_tensors
        _, _, grad = _run_fused(emb, triplets, target, choice, weight, ctx.mode, ctx.cosine, ctx.temperature,
                                ctx.teacher_temperature, ctx.reduction, ctx.backend, True)
    return grad


def _objective_backward(ctx, grad_out, _grad_dsim, _grad_grad):
    _refuse_double_backward()
    if grad_out is None:  # only dsim or grad was used downstream: neither carries a gradient
        return (None,) * 13
    if ctx.reduction == _NONE:
        emb, triplets, dsim, weight = ctx.saved_tensors
        coef = dsim * grad_out.to(dsim.dtype)[:, None]
        if ctx.has_weight:
            coef = coef * weight.to(dsim.dtype)[:, None]
        grad_emb = triplet_scatter_op(emb, triplets, coef, ctx.cosine, ctx.backend).to(ctx.emb_dtype)
        return (grad_emb,) + (None,) * 12
    if ctx.fused_grad is not None and ctx.fused_grad.numel() == 0:  # no gradient was requested in forward
        return (None,) * 13
    if grad_out.dim() == 0 and ctx.scale_in_place:
        # A reduced loss's upstream gradient is a scalar (known from its shape,
        # so tracing takes no data-dependent branch): the kernel scales the
        # fused gradient in place instead of allocating grad * grad_out, and
        # skips the pass when the scale is 1. Under torch.compile the op is
        # functionalized like any in-place op.
        grad = _fused_grad(ctx)
        ctx.fused_grad = None  # from here on the caller's
        if torch.compiler.is_compiling():
            triplet_grad_scale_op(grad, grad_out, ctx.backend)
        else:
            _scale_in_place(grad, grad_out, ctx.backend)
        return ((grad if grad.dtype == ctx.emb_dtype else grad.to(ctx.emb_dtype)),) + (None,) * 12
    grad = _fused_grad(ctx)
    return ((grad * grad_out.to(grad.dtype)).to(ctx.emb_dtype),) + (None,) * 12


triplet_objective_op.register_autograd(_objective_backward, setup_context=_objective_setup)
