"""The teacher's affine transform ``z = ((x - mean) / std) @ W + b``.

The standardisation is folded into the weights,
``z = x @ (W / std[:, None]) + (b - (mean / std) @ W)``, so the whole op is one
``addmm`` (a GEMM with a bias epilogue) and differentiable in ``W`` and ``b``.
Folding happens in float32 (float64 for float64) before the GEMM runs in the
input dtype, so bf16 inputs lose no accuracy to the fold.
"""

from __future__ import annotations

import math
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


def _check_std(std: Scalar, sd: torch.Tensor) -> None:
    if isinstance(std, torch.Tensor):
        bad = ~torch.isfinite(sd) | (sd <= 0)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0]) if std.dim() else 0
            raise ValueError(f"std must be finite and > 0, got {float(sd[i])} at index {i}")
    elif not (float(std) > 0 and math.isfinite(float(std))):
        raise ValueError(f"std must be finite and > 0, got {std}")


def fold_affine(W: torch.Tensor, b: Optional[torch.Tensor], mean: Scalar, std: Scalar, check_std: bool = True):
    """Return ``(W', b')`` with ``x @ W' + b' == ((x - mean) / std) @ W + b``.

    ``check_std`` (default) raises ``ValueError`` unless every std is finite and
    > 0; for a tensor std that reads it back (a device sync), so a caller that
    checked it once (``AffineTransform`` does when it is set) passes False.
    """
    if not isinstance(W, torch.Tensor) or W.dim() != 2 or not W.is_floating_point():
        raise TypeError(f"W must be a 2-D floating torch.Tensor (D, D'), got {type(W).__name__}")
    if b is not None and not isinstance(b, torch.Tensor):
        raise TypeError(f"b must be a torch.Tensor or None, got {type(b).__name__}")
    d = W.shape[0]
    acc = acc_dtype(W.dtype)
    Wa = W.to(acc)
    mu = _as_vector("mean", mean, d, W.device, acc)
    sd = _as_vector("std", std, d, W.device, acc)
    if check_std:
        _check_std(std, sd)
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
    check_std: bool = True,
) -> torch.Tensor:
    """``((x - mean) / std) @ W + b`` in one GEMM, optionally L2-normalised.

    Args:
        x: (N, D) features (fp32, bf16, fp16 or fp64).
        W: (D, D') weights.
        b: optional (D',) bias.
        mean, std: scalars or (D,) vectors; std finite and > 0.
        normalize: L2-normalise each output row.
        check_std: raise ``ValueError`` on a std that is not finite and > 0 (a
            tensor std is read back: one device sync per call); False skips it.

    Returns (N, D') in ``x.dtype``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a 2-D floating tensor (N, D), got {getattr(x, 'shape', type(x))}")
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"W must be a torch.Tensor, got {type(W).__name__}")
    if b is not None and not isinstance(b, torch.Tensor):
        raise TypeError(f"b must be a torch.Tensor or None, got {type(b).__name__}")
    if W.dim() != 2 or W.shape[0] != x.shape[1]:
        raise ValueError(f"W must have shape ({x.shape[1]}, D'), got {tuple(W.shape)}")
    if b is not None and b.shape != (W.shape[1],):
        raise ValueError(f"b must have shape ({W.shape[1]},), got {tuple(b.shape)}")
    w_folded, b_folded = fold_affine(W, b, mean, std, check_std)
    z = torch.addmm(b_folded.to(x.dtype), x, w_folded.to(x.dtype))
    if normalize:
        z = torch.nn.functional.normalize(z, dim=1)
    return z
