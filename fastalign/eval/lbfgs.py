"""Batched L-BFGS pieces shared by the few-shot logistic-regression fits (``fastalign.eval.logreg``
and its eigen-preconditioned fallback ``fastalign.eval.logreg_eigen``): the compact memory in a
metric, and the exact line search of a softmax cross-entropy with a quadratic penalty.

The memory applies its matrix in the compact form (Byrd, Nocedal and Schnabel, 1994):
``H g = gamma g + S p - gamma Y z`` with ``z = R^-1 S^T g`` and ``p`` from one more triangular
solve, ``R`` the upper triangle of ``S^T Y``: two batched products with the stored pairs per
iteration instead of the two-loop recursion's eight elementwise passes per pair.
"""

from __future__ import annotations

import torch

__all__ = ["LBFGSMemory", "newton_line_search", "row_dot"]


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of (E, P) matrices: (E,)."""
    return (a * b).sum(1)


def newton_line_search(logits: torch.Tensor, df: torch.Tensor, onehot: torch.Tensor, a_pd: torch.Tensor,
                       d_pd: torch.Tensor, steps: int) -> torch.Tensor:
    """Per-problem step ``t > 0`` minimising ``phi(t) = mean CE(logits + t df) + penalty(t)`` along a direction.

    Args:
        logits: (E, n, C) logits now; ``df``: (E, n, C) their change per unit step.
        onehot: (E, n, C) labels.
        a_pd, d_pd: (E,) the quadratic penalty's ``phi'(0)`` and its constant ``phi''``.
        steps: Newton steps.

    ``phi'(t) = mean_i (q_i . df_i - df_i[y_i]) + a_pd + t d_pd`` and
    ``phi''(t) = mean_i (q_i . df_i^2 - (q_i . df_i)^2) + d_pd`` with ``q_i = softmax(logits_i + t df_i)``:
    one softmax per step. ``phi`` is convex, so the zero of ``phi'`` is the minimiser; Newton steps
    are safeguarded by the bracket of signs seen so far.
    """
    n = onehot.shape[1]
    target = (onehot * df).sum(2)
    t = torch.ones_like(a_pd)
    lo = torch.zeros_like(t)
    hi = torch.full_like(t, float("inf"))
    for _ in range(steps):
        qdf = torch.softmax(torch.addcmul(logits, t[:, None, None], df), 2).mul_(df)
        qd = qdf.sum(2)
        d1 = (qd - target).sum(1) / n + a_pd + t * d_pd
        d2 = ((qdf.mul_(df)).sum(2) - qd * qd).sum(1) / n + d_pd
        lo = torch.where(d1 < 0, t, lo)
        hi = torch.where(d1 >= 0, t, hi)
        nt = t - d1 / d2.clamp_min(torch.finfo(d2.dtype).tiny)
        # Outside the bracket: bisect it, or double the step while phi' is still negative.
        t = torch.where((nt > lo) & (nt < hi), nt, torch.where(torch.isfinite(hi), (lo + hi) / 2, 2 * t))
    return t


class LBFGSMemory:
    """The last ``m`` pairs (s, y) and the images ``M y`` in slots; ``S^T Y`` and ``Y^T Y`` (metric) kept up to date.

    In the Euclidean metric (``M = I``) pass ``y`` and ``g`` as their own images.
    """

    def __init__(self, e: int, p: int, m: int, like: torch.Tensor):
        # s in [:m], y in [m:2m], M y in [2m:]
        self.rows = torch.zeros((e, 3 * m, p), dtype=like.dtype, device=like.device)
        self.pairs = self.rows[:, :2 * m]
        self.sy = torch.zeros((e, m, m), dtype=like.dtype, device=like.device)  # <s_i, y_j> by slot
        self.yy = torch.zeros_like(self.sy)  # <y_i, y_j>
        self.age = torch.full((m,), -1, dtype=torch.int64)  # iteration that filled each slot, -1: empty
        self.m, self.count = m, 0
        self.gamma = torch.zeros(e, dtype=like.dtype, device=like.device)

    def push(self, s: torch.Tensor, y: torch.Tensor, my: torch.Tensor, keep: torch.Tensor) -> None:
        """Store a pair per problem; a problem with ``keep`` False stores zeros (no curvature information)."""
        m, slot = self.m, self.count % self.m
        if not bool(keep.all()):
            s, y, my = s * keep[:, None], y * keep[:, None], my * keep[:, None]
        self.rows[:, slot], self.rows[:, m + slot], self.rows[:, 2 * m + slot] = s, y, my
        # <s_i, y_new> = s_i . M y_new and <y_i, y_new> likewise; <s_new, y_j> = M y_j . s_new.
        prods = torch.bmm(self.rows, torch.stack([my, s], 2))  # (E, 3m, 2)
        self.sy[:, slot, :] = prods[:, 2 * m:, 1]
        self.sy[:, :, slot] = prods[:, :m, 0]
        self.yy[:, slot, :], self.yy[:, :, slot] = prods[:, m:2 * m, 0], prods[:, m:2 * m, 0]
        self.age[slot] = self.count
        self.count += 1
        sy, yy = self.sy[:, slot, slot], self.yy[:, slot, slot]
        # A problem that stored nothing this time keeps its last scale.
        self.gamma = torch.where(keep & (yy > 0), sy / yy.clamp_min(torch.finfo(sy.dtype).tiny), self.gamma)

    def apply(self, g: torch.Tensor, mg: torch.Tensor) -> torch.Tensor:
        """``H g`` with the compact L-BFGS matrix (``g`` itself while the memory is empty); ``mg = M g``."""
        if self.count == 0:
            return g
        # The triangular solves need the pairs oldest first; only the small (m) quantities are reordered.
        m = self.m
        filled = (self.age >= 0).nonzero().squeeze(1)
        order = filled[torch.argsort(self.age[filled])]
        sy = self.sy[:, order][:, :, order]
        yy = self.yy[:, order][:, :, order]
        diag = torch.diagonal(sy, dim1=1, dim2=2)
        empty = diag <= 0  # problems that stored zeros there: an identity row keeps R invertible
        r = torch.triu(sy) + torch.diag_embed(empty.to(sy.dtype))
        gamma = torch.where(self.gamma > 0, self.gamma, torch.ones_like(self.gamma))
        uv = torch.bmm(self.pairs, mg[:, :, None])  # <s_i, g>, <y_i, g>
        u, v = uv[:, order], uv[:, m + order]
        z = torch.linalg.solve_triangular(r, u, upper=True)
        rhs = (diag * ~empty)[:, :, None] * z + gamma[:, None, None] * (torch.bmm(yy, z) - v)
        p = torch.linalg.solve_triangular(r.transpose(1, 2), rhs, upper=False)
        # Back to slots (empty slots hold zero pairs): H g = gamma g + S p - gamma Y z.
        coef = torch.zeros((g.shape[0], 2 * m, 1), dtype=g.dtype, device=g.device)
        coef[:, order] = p
        coef[:, m + order] = -gamma[:, None, None] * z
        # A row vector times the pairs: cheaper than the pairs' transpose times a column.
        return torch.baddbmm(gamma[:, None, None] * g[:, None, :], coef.transpose(1, 2), self.pairs)[:, 0]
