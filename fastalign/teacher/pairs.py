"""The KL loss of many triplets over few objects, through the N x N similarity matrix.

With M soft triplets over N objects and M >~ N^2 / 4 (THINGS: N = 1,854, M = 1M),
the triplet similarities are cheaper read off ``S = Z Z^T`` than gathered row by
row: ``S`` is one GEMM (2 N^2 D flops, compute-bound), each triplet then needs
three scalar loads instead of three D-wide row loads, and the gradient is one
scatter of the (M, 3) softmax residuals into an N x N matrix followed by one GEMM
``(G + G^T) Z``. The linear part of the KL, ``-sum_t p_t . s_t``, is the fixed
matrix ``P`` (targets summed per pair) dotted with ``S``, aggregated once.

``PairKL`` holds what a fit reuses at every evaluation; ``pair_kl(z, pairs)`` is
the loss with its autograd backward. ``fastalign.triplet_distill_loss`` (the fused
kernel) computes the same number; ``use_pairs`` says when this path is the faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MAX_PAIR_OBJECTS", "PairKL", "pair_kl", "use_pairs"]

# Largest N for the N x N path: S and its gradient take 2 N^2 floats (4096: 128 MiB in float32).
MAX_PAIR_OBJECTS = 4096


def use_pairs(n_objects: int, n_triplets: int) -> bool:
    """True when the N x N path costs less than the fused row gathers (measured on THINGS, D = 512:
    1M triplets cost ~0.4 s by pairs and ~1.0 s fused per evaluation on 2 cores)."""
    return n_objects <= MAX_PAIR_OBJECTS and 4 * n_triplets >= n_objects * n_objects // 4


@dataclass
class PairKL:
    """Fixed data of the KL over pairs of ``n`` objects.

    Attributes:
        n: number of objects.
        flat: (M, 3) int64 flat indices ``i n + j`` of the pairs (01, 02, 12) of each triplet.
        target: (M, 3) target probabilities.
        pair_target: (n, n) targets summed per pair / M (the gradient of the linear term).
        entropy_term: ``mean_t sum_p p log p`` (the constant of the KL).
    """

    n: int
    flat: torch.Tensor
    target: torch.Tensor
    pair_target: torch.Tensor
    entropy_term: float

    @classmethod
    def build(cls, triplets: torch.Tensor, target: torch.Tensor, n: int, dtype: torch.dtype) -> "PairKL":
        """Index the triplets' pairs; rows are used as given (columns 0, 1, 2)."""
        t = triplets.to(torch.int64)
        flat = torch.stack([t[:, 0] * n + t[:, 1], t[:, 0] * n + t[:, 2], t[:, 1] * n + t[:, 2]], 1).contiguous()
        p = target.to(dtype).contiguous()
        m = max(int(t.shape[0]), 1)
        pair = torch.zeros(n * n, dtype=dtype).index_add_(0, flat.reshape(-1), p.reshape(-1)).view(n, n) / m
        plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
        return cls(n, flat, p, pair, float(plogp.sum(dtype=torch.float64)) / m)


class _PairKLFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, pairs: PairKL) -> torch.Tensor:  # type: ignore[override]
        m = pairs.flat.shape[0]
        s_mat = z @ z.T
        sims = s_mat.view(-1).take(pairs.flat)
        top = sims.max(1, keepdim=True).values
        e = (sims - top).exp_()
        tot = e.sum(1, keepdim=True)
        lse = (top + tot.log()).sum(dtype=torch.float64) / m
        loss = pairs.entropy_term - float((pairs.pair_target * s_mat).sum(dtype=torch.float64)) + float(lse)
        q = e.div_(tot).div_(m)  # softmax / M: the gradient of the log-sum-exp term per pair
        grad_s = torch.zeros(pairs.n * pairs.n, dtype=z.dtype).index_add_(0, pairs.flat.reshape(-1), q.reshape(-1))
        grad_s = grad_s.view(pairs.n, pairs.n).sub_(pairs.pair_target)
        ctx.save_for_backward(z, grad_s)
        return torch.tensor(loss, dtype=z.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        z, grad_s = ctx.saved_tensors
        # d/dZ <G, Z Z^T> = (G + G^T) Z
        return grad_out * ((grad_s + grad_s.T) @ z), None


def pair_kl(z: torch.Tensor, pairs: PairKL) -> torch.Tensor:
    """Mean KL(target || softmax(similarities)) over the triplets of ``pairs``, on rows ``z`` (N, D)."""
    if z.shape[0] != pairs.n:
        raise ValueError(f"pair_kl: z has {z.shape[0]} rows, the pairs index {pairs.n} objects")
    return _PairKLFunction.apply(z, pairs)
