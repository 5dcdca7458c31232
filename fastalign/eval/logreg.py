"""Many small multinomial logistic regressions at once, from their Gram matrices.

Problem ``e`` of a batch minimises, over its ``n`` rows ``x_i`` (``D`` features)::

    f(W, b) = mean_i CE(x_i W + b, y_i) + l2 / 2 * ||W||_F^2        (b not penalised)

Two changes of variables that leave the minimiser alone make it small, and a
metric makes it well conditioned; then L-BFGS runs on every problem at once:

1. Centring. ``x W + b = (x - mean) W + (b + mean W)`` and ``b`` is free, so the
   rows can be centred; that removes the common direction of all rows, which
   otherwise nearly duplicates the bias.
2. Kernel coordinates. Every gradient in ``W`` is ``Xc^T (something)``, so the
   minimiser is ``W = Xc^T A``: with the centred Gram matrix ``Kc = Xc Xc^T``
   the logits are ``Kc A + b`` and ``||W||^2 = tr(A^T Kc A)``: ``n x C``
   unknowns instead of ``D x C`` (a few-shot support set has far fewer rows
   than features). With ``R = softmax(logits) - Y`` and ``G = R / n + l2 A``,
   the gradient is ``Kc G`` in ``A`` and ``1^T R / n`` in ``b``; the gradient
   in ``W`` is ``Xc^T G``, of norm ``(G . Kc G)^(1/2)`` (the stopping test's).
3. The metric. L-BFGS needs inner products ``<u, v> = u . M v`` and the
   gradient's representer ``g = M^-1 grad``; it only ever takes inner products
   with the gradient or with a ``y = g' - g``, whose images ``M g = grad`` and
   ``M y = grad' - grad`` come free. So any metric with a cheap ``M^-1`` will
   do; on ``A`` we take ``M^-1 = ca (I - kappa Kc)``: ``g_A = ca (G - kappa Kc G)``,
   no product beyond the gradient's own ``Kc R``. On ``b~ = beta^(1/2) b`` the
   metric is Euclidean.

   Why this metric: the Hessian in ``A`` is about ``Kc (beta Kc / n + l2)``
   (``beta`` the cross-entropy's curvature: ``1 / C`` at uniform probabilities,
   less as the fit grows confident; ``0.2 / C`` took the fewest iterations on
   the THINGS probes), so ``M^-1`` times it has eigenvalues
   ``ca l2 (1 - c u)(1 + u)`` on the range of ``Kc``, with
   ``u = beta lam / (n l2)`` and ``kappa = c beta / (n l2)``. For ``u`` in
   ``[0, U]`` and ``c = 1 / (1 + U)`` that is ``ca l2`` at both ends and at
   most ``ca l2 (2 + U)^2 / (4 (1 + U))`` between: for ``U = 3``, a condition
   number of 1.56 where ``u`` alone would spread over ``1 + U = 4`` (on the
   THINGS supports ``U`` is 0.2-1, larger for fewer features). ``U`` comes
   from ``||Kc||_F >= lam_max`` (a guaranteed bound, if up to 2.5 times loose
   there: ``I - kappa Kc`` stays positive definite), and ``ca = 1 / l2``. The
   bias's Hessian, about ``beta``, is about 1 in ``b~``. Directions that
   ``Kc`` annihilates change neither the logits nor ``W``; the metric ignores
   them (``M`` is singular there, ``M^-1`` is not).

L-BFGS (``fastalign.eval.lbfgs``: the compact form, in a metric) runs on every
problem at once. Each problem has its own history, step and stopping test: the
gradient norm of the original problem in ``(W, b)``, relative to its first one,
``<= tol``. The line search is exact: safeguarded Newton steps on ``phi'(t)``,
whose derivatives along the direction cost one softmax of the ``n x C`` logits
(the objective is convex, so the step that zeroes ``phi'`` is the minimiser
along the direction). Per iteration the products with ``Kc`` are two: the
direction's logits ``Kc d`` and the gradient's ``Kc R`` (``Kc A`` is tracked:
the logits less the bias). Problems whose bound ``U`` is large take the
eigen-preconditioned fit of ``fastalign.eval.logreg_eigen`` instead.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .lbfgs import LBFGSMemory, newton_line_search, row_dot
from .logreg_eigen import fit_eigen

__all__ = ["fit_kernel_logreg"]


class _Problem:
    """A batch in kernel coordinates; parameters are flat rows ``theta = (vec A, b~)``."""

    def __init__(self, k: torch.Tensor, onehot: torch.Tensor, l2: float):
        self.onehot, self.l2 = onehot, l2
        self.e, self.n, self.c = onehot.shape
        self.na = self.n * self.c
        self.kc = k - k.mean(1, keepdim=True) - k.mean(2, keepdim=True) + k.mean((1, 2), keepdim=True)
        self.beta = 0.2 / self.c
        self.u_max = self.beta * torch.linalg.matrix_norm(self.kc) / (self.n * l2)  # >= beta lam_max / (n l2)
        self.kappa = (self.beta / (self.n * l2) / (1.0 + self.u_max))[:, None, None]  # (E, 1, 1)
        self.ca = 1.0 / l2
        self.bscale = self.beta ** -0.5  # b = bscale b~
        self.kmean = k.mean(1, keepdim=True)  # (E, 1, n): for the uncentred bias

    def split(self, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(A, b~)`` parts of flat rows: (E, n, C), (E, C)."""
        return v[:, :self.na].view(self.e, self.n, self.c), v[:, self.na:]

    def gradient(self, theta: torch.Tensor, ka: torch.Tensor,
                 logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """At ``theta`` (``ka = Kc A``): the representer ``g``, its image ``M g`` (the gradient) and
        the gradient norm of the original problem in ``(W, b)``."""
        r = torch.softmax(logits, 2) - self.onehot  # n times the gradient in the logits
        g = torch.empty_like(theta)
        mg = torch.empty_like(theta)
        ga, gb = self.split(g)
        mga, mgb = self.split(mg)
        big_g = torch.add(r, self.split(theta)[0], alpha=self.l2 * self.n).div_(self.n)  # G = R / n + l2 A
        torch.bmm(self.kc, r, out=mga)
        mga.div_(self.n).add_(ka, alpha=self.l2)  # Kc G
        torch.sum(r, 1, out=mgb)
        mgb /= self.n
        sq = (big_g * mga).sum((1, 2)) + (mgb * mgb).sum(1)
        mgb *= self.bscale
        gb.copy_(mgb)
        torch.addcmul(big_g, self.kappa, mga, value=-1.0, out=ga)
        ga *= self.ca
        return g, mg, sq.clamp_min(0.0).sqrt()

    def direction(self, d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``Kc dA`` and the logit change of a direction ``d``."""
        da, db = self.split(d)
        kda = torch.bmm(self.kc, da)
        return kda, torch.add(kda, db[:, None, :], alpha=self.bscale)

    def line_search(self, ka, logits, d, kda, df, steps: int) -> torch.Tensor:
        """Per-problem step ``t > 0`` minimising the objective along ``d`` (``df``: its logit change)."""
        da = self.split(d)[0]
        a_pd = self.l2 * (da * ka).sum((1, 2))  # the penalty l2/2 tr(A^T Kc A): its phi' at t = 0 ...
        d_pd = self.l2 * (da * kda).sum((1, 2))  # ... and its constant phi''
        return newton_line_search(logits, df, self.onehot, a_pd, d_pd, steps)

    def solution(self, theta: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(A, b)`` of the uncentred problem: ``W = X^T A``, logits ``K A + b``."""
        a, bt = self.split(theta)
        a = a - a.mean(1, keepdim=True)  # exact zero column sums: W = Xc^T A = X^T A
        # logits (x - mean) W + b_c = x W + (b_c - mean_i (K A)_i)
        b = self.bscale * bt - torch.bmm(self.kmean, a)[:, 0]
        return a, b


# Above this U the linear metric leaves a condition number over 2.8 ((2 + U)^2 / (4 (1 + U)) grows like
# U / 4: features far from unit norm, or a small l2), and float32 rounding in the null space of Kc,
# which the metric ignores, can make a slow fit diverge; such problems use eigen-preconditioned
# coordinates instead (condition about 1 whatever U is). On the THINGS probes U is at most 3.
U_FALLBACK = 8.0

def _fit_metric(prob, max_iter, tol, history, line_steps):
    """L-BFGS in the metric ``M^-1 = ca (I - kappa Kc)`` (no eigendecomposition)."""
    e, n_classes = prob.e, prob.c
    theta = torch.zeros((e, prob.na + n_classes), dtype=prob.kc.dtype, device=prob.kc.device)
    ka = torch.zeros_like(prob.onehot)  # Kc A
    logits = torch.zeros_like(prob.onehot)
    g, mg, g0 = prob.gradient(theta, ka, logits)
    active = g0 > 0
    iters = torch.zeros(e, dtype=torch.int64, device=prob.kc.device)
    mem = LBFGSMemory(e, theta.shape[1], max(1, int(history)), theta)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        d = -mem.apply(g, mg)  # a new tensor: with an empty memory apply returns g itself
        # Rounding can cost a direction its descent; fall back to the gradient there.
        uphill = row_dot(d, mg) >= 0
        if bool(uphill.any()):
            d = torch.where(uphill[:, None], -g, d)
        kda, df = prob.direction(d)
        t = torch.where(active, prob.line_search(ka, logits, d, kda, df, line_steps), torch.zeros_like(g0))
        s = t[:, None] * d
        theta = theta + s
        ka = torch.addcmul(ka, t[:, None, None], kda)
        logits = torch.addcmul(logits, t[:, None, None], df)
        g_new, mg_new, gnorm = prob.gradient(theta, ka, logits)
        yv, myv = g_new - g, mg_new - mg
        mem.push(s, yv, myv, active & (row_dot(s, myv) > 0))
        g, mg = g_new, mg_new
        iters += active.long()
        active = active & (gnorm > tol * g0)
    a, b = prob.solution(theta)
    return a, b, iters


def fit_kernel_logreg(
    k: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int = 100, tol: float = 1e-4,
    history: int = 5, line_steps: int = 2,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit a batch of multinomial logistic regressions given their Gram matrices.

    Args:
        k: (E, n, n) Gram matrix ``X X^T`` of each problem's rows (float32 or float64).
        y: (n,) labels shared by all problems, or (E, n); values in [0, n_classes).
        n_classes: number of classes C.
        l2: penalty weight, > 0.
        max_iter: L-BFGS iterations per problem at most.
        tol: a problem stops when its gradient norm is ``<= tol`` times its first one.
        history: L-BFGS memory.
        line_steps: Newton steps of the line search.

    Returns ``(A, b, iterations)``: (E, n, C) with ``W = X^T A`` (logits ``K A + b``), (E, C)
    biases and (E,) iterations each problem ran.
    """
    e, n, _ = k.shape
    yy = y.expand(e, n) if y.dim() == 1 else y
    onehot = torch.nn.functional.one_hot(yy.long(), n_classes).to(k.dtype)
    args = (max_iter, tol, history, line_steps)
    prob = _Problem(k, onehot, float(l2))
    large = prob.u_max > U_FALLBACK
    if not bool(large.any()):
        return _fit_metric(prob, *args)
    if bool(large.all()):
        return fit_eigen(k, onehot, float(l2), *args)
    small = ~large
    parts = [(small, _fit_metric(_Problem(k[small], onehot[small], float(l2)), *args)),
             (large, fit_eigen(k[large], onehot[large], float(l2), *args))]
    out = [torch.empty((e,) + t.shape[1:], dtype=t.dtype, device=t.device) for t in parts[0][1]]
    for mask, results in parts:
        for o, t in zip(out, results):
            o[mask] = t
    return out[0], out[1], out[2]
