"""The teacher's affine transform ``z = ((x - mean) / std) @ W + b``.

The standardisation is folded into the weights,
``z = x @ (W / std[:, None]) + (b - (mean / std) @ W)``, so the whole op is one
``addmm`` (a GEMM with a bias epilogue) and differentiable in ``W`` and ``b``.
Folding happens in float32 (float64 for float64) before the GEMM runs in the
input dtype, so bf16 inputs lose no accuracy to the fold.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from ..kernels.contract import acc_dtype

Scalar = Union[float, torch.Tensor]


def _as_vector(name: str, value: Scalar, d: int, device, dtype) -> torch.Tensor:
    t = torch.as_tensor(value, device=device, dtype=dtype)
    if t.dim() == 0:
        return t.expand(d)
    if t.shape != (d,):
        raise ValueError(f"{name} must be a scalar or shape ({d},), got {tuple(t.shape)}")
    return t


def fold_affine(W: torch.Tensor, b: Optional[torch.Tensor], mean: Scalar, std: Scalar):
    """Return ``(W', b')`` with ``x @ W' + b' == ((x - mean) / std) @ W + b``."""
    d = W.shape[0]
    acc = acc_dtype(W.dtype)
    Wa = W.to(acc)
    mu = _as_vector("mean", mean, d, W.device, acc)
    sd = _as_vector("std", std, d, W.device, acc)
    # A tensor std is checked where it is set (AffineTransform), not here on
    # every call: reading it back would sync the device each training step.
    if not isinstance(std, torch.Tensor) and float(std) <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    w_folded = Wa / sd[:, None]
    b_folded = -(mu / sd) @ Wa
    if b is not None:
        b_folded = b_folded + b.to(acc)
    return w_folded, b_folded


def affine_transform(
    x: torch.Tensor,
    W: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    mean: Scalar = 0.0,
    std: Scalar = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """``((x - mean) / std) @ W + b`` in one GEMM, optionally L2-normalised.

    Args:
        x: (N, D) features (fp32, bf16, fp16 or fp64).
        W: (D, D') weights.
        b: optional (D',) bias.
        mean, std: scalars or (D,) vectors.
        normalize: L2-normalise each output row.

    Returns (N, D') in ``x.dtype``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a 2-D floating tensor (N, D), got {getattr(x, 'shape', type(x))}")
    if W.dim() != 2 or W.shape[0] != x.shape[1]:
        raise ValueError(f"W must have shape ({x.shape[1]}, D'), got {tuple(W.shape)}")
    if b is not None and b.shape != (W.shape[1],):
        raise ValueError(f"b must have shape ({W.shape[1]},), got {tuple(b.shape)}")
    w_folded, b_folded = fold_affine(W, b, mean, std)
    z = torch.addmm(b_folded.to(x.dtype), x, w_folded.to(x.dtype))
    if normalize:
        z = torch.nn.functional.normalize(z, dim=1)
    return z
