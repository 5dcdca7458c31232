"""Linear centred kernel alignment (Kornblith et al., 2019).

``CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-
centred ``Xc``, ``Yc``: the feature-space form of
``HSIC(XX^T, YY^T) / sqrt(HSIC(XX^T, XX^T) HSIC(YY^T, YY^T))``. It costs
``O(N D^2)`` and never builds an N x N Gram matrix. Computed in float64 on the
inputs' device.
"""

from __future__ import annotations

from typing import Any

import torch

from ..common.tensors import as_emb

__all__ = ["linear_cka"]


def linear_cka(x: Any, y: Any) -> float:
    """Linear CKA between two representations of the same N objects, in [0, 1].

    Args:
        x: (N, D1) numpy array or tensor.
        y: (N, D2), rows the same objects as ``x``.

    Returns NaN when either representation is constant over objects.
    """
    xt = as_emb(x, "x").to(torch.float64)
    yt = as_emb(y, "y", device=xt.device).to(torch.float64)
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(f"x has {xt.shape[0]} rows but y has {yt.shape[0]}; both must list the same objects")
    xt = xt - xt.mean(0, keepdim=True)
    yt = yt - yt.mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(yt.T @ xt) ** 2
    denom = torch.linalg.matrix_norm(xt.T @ xt) * torch.linalg.matrix_norm(yt.T @ yt)
    if float(denom) == 0.0:
        return float("nan")
    return float(cross / denom)
