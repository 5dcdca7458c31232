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

L-BFGS applies its matrix in the compact form (Byrd, Nocedal and Schnabel,
1994): ``H g = gamma g + S p - gamma Y z`` with ``z = R^-1 S^T g`` and ``p`` from
one more triangular solve, ``R`` the upper triangle of ``S^T Y``: two batched
products with the stored pairs per iteration instead of the two-loop recursion's
eight elementwise passes per pair (on a loaded CPU every large op waits for
both threads). Each problem has its own history, step and stopping test: the
gradient norm of the original problem in ``(W, b)``, relative to its first one,
``<= tol``. The line search is exact: safeguarded Newton steps on ``phi'(t)``,
whose derivatives along the direction cost one softmax of the ``n x C`` logits
(the objective is convex, so the step that zeroes ``phi'`` is the minimiser
along the direction). Per iteration the products with ``Kc`` are two: the
direction's logits ``Kc d`` and the gradient's ``Kc R`` (``Kc A`` is tracked:
the logits less the bias).
"""

from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["fit_kernel_logreg"]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of (E, P) matrices: (E,)."""
    return (a * b).sum(1)


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

    def line_search(self, theta, ka, logits, d, kda, df, steps: int) -> torch.Tensor:
        """Per-problem step ``t > 0`` minimising the objective along ``d`` (``df``: its logit change)."""
        da = self.split(d)[0]
        a_pd = self.l2 * (da * ka).sum((1, 2))  # the penalty l2/2 tr(A^T Kc A): its phi' at t = 0 ...
        d_pd = self.l2 * (da * kda).sum((1, 2))  # ... and its constant phi''
        target = (self.onehot * df).sum(2)
        t = torch.ones_like(a_pd)
        lo = torch.zeros_like(t)
        hi = torch.full_like(t, float("inf"))
        for _ in range(steps):
            qdf = torch.softmax(torch.addcmul(logits, t[:, None, None], df), 2).mul_(df)
            qd = qdf.sum(2)
            d1 = (qd - target).sum(1) / self.n + a_pd + t * d_pd
            d2 = ((qdf.mul_(df)).sum(2) - qd * qd).sum(1) / self.n + d_pd
            lo = torch.where(d1 < 0, t, lo)
            hi = torch.where(d1 >= 0, t, hi)
            nt = t - d1 / d2.clamp_min(torch.finfo(d2.dtype).tiny)
            # Outside the bracket: bisect it, or double the step while phi' is still negative.
            t = torch.where((nt > lo) & (nt < hi), nt, torch.where(torch.isfinite(hi), (lo + hi) / 2, 2 * t))
        return t

    def solution(self, theta: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(A, b)`` of the uncentred problem: ``W = X^T A``, logits ``K A + b``."""
        a, bt = self.split(theta)
        a = a - a.mean(1, keepdim=True)  # exact zero column sums: W = Xc^T A = X^T A
        # logits (x - mean) W + b_c = x W + (b_c - mean_i (K A)_i)
        b = self.bscale * bt - torch.bmm(self.kmean, a)[:, 0]
        return a, b


class _Memory:
    """The last ``m`` pairs (s, y) and the images ``M y`` in slots; ``S^T Y`` and ``Y^T Y`` (metric) kept up to date."""

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


# Above this U the linear metric leaves a condition number over 2.8 ((2 + U)^2 / (4 (1 + U)) grows like
# U / 4: features far from unit norm, or a small l2), and float32 rounding in the null space of Kc,
# which the metric ignores, can make a slow fit diverge; such problems use eigen-preconditioned
# coordinates instead (condition about 1 whatever U is). On the THINGS probes U is at most 3.
U_FALLBACK = 8.0

# The fallback for large U: eigen-preconditioned coordinates (condition about 1 whatever U is).


class _EigenProblem:
    """The fallback: a batch in eigen-preconditioned kernel coordinates ``theta = (vec V~, b~)``, with
    ``logits = U (lam / diag)^(1/2) V~ + b~ / beta^(1/2)`` and ``diag = beta lam / n + l2``."""

    def __init__(self, k: torch.Tensor, onehot: torch.Tensor, l2: float):
        self.onehot, self.l2 = onehot, l2
        self.e, self.n, self.c = onehot.shape
        self.na = self.n * self.c
        kc = k - k.mean(1, keepdim=True) - k.mean(2, keepdim=True) + k.mean((1, 2), keepdim=True)
        lam, self.u = torch.linalg.eigh(kc)
        self.lam = lam.clamp_min(0.0)
        self.beta = 0.5 / self.c
        self.diag = self.beta * self.lam / self.n + l2  # (E, n): the Hessian per row of V, about
        self.z = self.u * (self.lam / self.diag).sqrt()[:, None, :]  # logits = z V~ + b~ / beta^(1/2)
        self.zt_n = (self.z.transpose(1, 2) / self.n).contiguous()  # for the mean cross-entropy's gradient
        self.pen = (l2 / self.diag)[:, :, None]  # the penalty's Hessian per row of V~
        self.bscale = self.beta ** -0.5
        self.k = k

    def split(self, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return v[:, :self.na].view(self.e, self.n, self.c), v[:, self.na:]

    def logits(self, v: torch.Tensor) -> torch.Tensor:
        """Logits of parameters ``v`` (or their change along a direction ``v``)."""
        a, b = self.split(v)
        return torch.baddbmm(self.bscale * b[:, None, :], self.z, a)

    def penalty_grad(self, v: torch.Tensor) -> torch.Tensor:
        """Gradient of ``l2 / 2 ||W||^2`` in these coordinates (``V = V~ / diag^(1/2)``)."""
        return self.split(v)[0] * self.pen

    def gradient(self, theta: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        r = torch.softmax(logits, 2) - self.onehot  # n times the gradient in the logits
        g = torch.empty_like(theta)
        ga, gb = self.split(g)
        torch.bmm(self.zt_n, r, out=ga)
        ga.addcmul_(self.split(theta)[0], self.pen)
        torch.sum(r, 1, out=gb)
        gb *= self.bscale / self.n
        return g

    def grad_norm(self, g: torch.Tensor) -> torch.Tensor:
        """The gradient norm of the original problem in ``(W, b)``."""
        ga, gb = self.split(g)
        return torch.sqrt(((ga * ga).sum(2) * self.diag).sum(1) + (gb * gb).sum(1) / self.bscale ** 2)

    def line_search(self, theta, logits, d, df, steps: int) -> torch.Tensor:
        """Per-problem step ``t > 0`` minimising the objective along ``d`` (``df``: its logit change)."""
        da = self.split(d)[0]
        pd = self.penalty_grad(d)
        a_pd = (pd * self.split(theta)[0]).sum((1, 2))  # the penalty's phi' at t = 0 ...
        d_pd = (pd * da).sum((1, 2))  # ... and its constant phi''
        target = (self.onehot * df).sum(2)
        t = torch.ones_like(a_pd)
        lo = torch.zeros_like(t)
        hi = torch.full_like(t, float("inf"))
        for _ in range(steps):
            qdf = torch.softmax(torch.addcmul(logits, t[:, None, None], df), 2).mul_(df)
            qd = qdf.sum(2)
            d1 = (qd - target).sum(1) / self.n + a_pd + t * d_pd
            d2 = ((qdf.mul_(df)).sum(2) - qd * qd).sum(1) / self.n + d_pd
            lo = torch.where(d1 < 0, t, lo)
            hi = torch.where(d1 >= 0, t, hi)
            nt = t - d1 / d2.clamp_min(torch.finfo(d2.dtype).tiny)
            # Outside the bracket: bisect it, or double the step while phi' is still negative.
            t = torch.where((nt > lo) & (nt < hi), nt, torch.where(torch.isfinite(hi), (lo + hi) / 2, 2 * t))
        return t

    def solution(self, theta: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(A, b)`` of the uncentred problem: ``W = X^T A``, logits ``K A + b``."""
        vt, bt = self.split(theta)
        # V = V~ / diag^(1/2); A = U lam^(-1/2) V, 0 along the directions Kc does not span.
        inv = torch.where(self.lam > self.lam.amax(1, keepdim=True) * 1e-7,
                          (self.lam * self.diag).clamp_min(torch.finfo(self.lam.dtype).tiny).rsqrt(),
                          torch.zeros_like(self.lam))
        a = torch.bmm(self.u, inv[:, :, None] * vt)
        a = a - a.mean(1, keepdim=True)  # exact zero column sums: W = Xc^T A = X^T A
        # logits (x - mean) W + b_c = x W + (b_c - mean_i (K A)_i)
        b = self.bscale * bt - torch.bmm(self.k, a).mean(1)
        return a, b


class _EuclideanMemory:
    """The last ``m`` pairs (s, y) in slots, with ``S^T Y`` and ``Y^T Y`` kept up to date."""

    def __init__(self, e: int, p: int, m: int, like: torch.Tensor):
        self.pairs = torch.zeros((e, 2 * m, p), dtype=like.dtype, device=like.device)  # s in [:m], y in [m:]
        self.sy = torch.zeros((e, m, m), dtype=like.dtype, device=like.device)  # <s_i, y_j> by slot
        self.yy = torch.zeros_like(self.sy)  # <y_i, y_j>
        self.age = torch.full((m,), -1, dtype=torch.int64)  # iteration that filled each slot, -1: empty
        self.m, self.count = m, 0
        self.gamma = torch.zeros(e, dtype=like.dtype, device=like.device)

    def push(self, s: torch.Tensor, y: torch.Tensor, keep: torch.Tensor) -> None:
        """Store a pair per problem; a problem with ``keep`` False stores zeros (no curvature information)."""
        m, slot = self.m, self.count % self.m
        if not bool(keep.all()):
            s, y = s * keep[:, None], y * keep[:, None]
        self.pairs[:, slot], self.pairs[:, m + slot] = s, y
        prods = torch.bmm(self.pairs, torch.stack([s, y], 1).transpose(1, 2))  # (E, 2m, 2): <pair, s>, <pair, y>
        self.sy[:, slot, :] = prods[:, m:, 0]  # <s_new, y_j>
        self.sy[:, :, slot] = prods[:, :m, 1]  # <s_i, y_new>
        self.yy[:, slot, :], self.yy[:, :, slot] = prods[:, m:, 1], prods[:, m:, 1]
        self.age[slot] = self.count
        self.count += 1
        sy, yy = self.sy[:, slot, slot], self.yy[:, slot, slot]
        # A problem that stored nothing this time keeps its last scale.
        self.gamma = torch.where(keep & (yy > 0), sy / yy.clamp_min(torch.finfo(sy.dtype).tiny), self.gamma)

    def apply(self, g: torch.Tensor) -> torch.Tensor:
        """``H g`` with the compact L-BFGS matrix (``g`` itself while the memory is empty)."""
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
        uv = torch.bmm(self.pairs, g[:, :, None])  # <s_i, g>, <y_i, g>
        u, v = uv[:, order], uv[:, m + order]
        z = torch.linalg.solve_triangular(r, u, upper=True)
        rhs = (diag * ~empty)[:, :, None] * z + gamma[:, None, None] * (torch.bmm(yy, z) - v)
        p = torch.linalg.solve_triangular(r.transpose(1, 2), rhs, upper=False)
        # Back to slots (empty slots hold zero pairs): H g = gamma g + S p - gamma Y z.
        coef = torch.zeros((g.shape[0], 2 * m, 1), dtype=g.dtype, device=g.device)
        coef[:, order] = p
        coef[:, m + order] = -gamma[:, None, None] * z
        # A row vector times the pairs (contiguous): cheaper than the pairs' transpose times a column.
        return torch.baddbmm(gamma[:, None, None] * g[:, None, :], coef.transpose(1, 2), self.pairs)[:, 0]


def _fit_eigen(k, onehot, l2, max_iter, tol, history, line_steps):
    """The eigen-preconditioned fit (one ``eigh`` per problem): for problems whose ``U`` is large."""
    prob = _EigenProblem(k, onehot, l2)
    e, n_classes = k.shape[0], onehot.shape[2]
    theta = torch.zeros((e, prob.na + n_classes), dtype=k.dtype, device=k.device)
    logits = torch.zeros_like(prob.onehot)
    g = prob.gradient(theta, logits)
    g0 = prob.grad_norm(g)
    active = g0 > 0
    iters = torch.zeros(e, dtype=torch.int64, device=k.device)
    mem = _EuclideanMemory(e, theta.shape[1], max(1, int(history)), theta)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        d = -mem.apply(g)  # a new tensor: with an empty memory apply returns g itself
        # Rounding can cost a direction its descent; fall back to the gradient there.
        uphill = _dot(d, g) >= 0
        if bool(uphill.any()):
            d = torch.where(uphill[:, None], -g, d)
        df = prob.logits(d)
        t = torch.where(active, prob.line_search(theta, logits, d, df, line_steps), torch.zeros_like(g0))
        s = t[:, None] * d
        theta = theta + s
        logits = torch.addcmul(logits, t[:, None, None], df)
        g_new = prob.gradient(theta, logits)
        yv = g_new - g
        mem.push(s, yv, active & (_dot(s, yv) > 0))
        g = g_new
        iters += active.long()
        active = active & (prob.grad_norm(g) > tol * g0)
    a, b = prob.solution(theta)
    return a, b, iters


def _fit_metric(prob, max_iter, tol, history, line_steps):
    """L-BFGS in the metric ``M^-1 = ca (I - kappa Kc)`` (no eigendecomposition)."""
    e, n_classes = prob.e, prob.c
    theta = torch.zeros((e, prob.na + n_classes), dtype=prob.kc.dtype, device=prob.kc.device)
    ka = torch.zeros_like(prob.onehot)  # Kc A
    logits = torch.zeros_like(prob.onehot)
    g, mg, g0 = prob.gradient(theta, ka, logits)
    active = g0 > 0
    iters = torch.zeros(e, dtype=torch.int64, device=prob.kc.device)
    mem = _Memory(e, theta.shape[1], max(1, int(history)), theta)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        d = -mem.apply(g, mg)  # a new tensor: with an empty memory apply returns g itself
        # Rounding can cost a direction its descent; fall back to the gradient there.
        uphill = _dot(d, mg) >= 0
        if bool(uphill.any()):
            d = torch.where(uphill[:, None], -g, d)
        kda, df = prob.direction(d)
        t = torch.where(active, prob.line_search(theta, ka, logits, d, kda, df, line_steps), torch.zeros_like(g0))
        s = t[:, None] * d
        theta = theta + s
        ka = torch.addcmul(ka, t[:, None, None], kda)
        logits = torch.addcmul(logits, t[:, None, None], df)
        g_new, mg_new, gnorm = prob.gradient(theta, ka, logits)
        yv, myv = g_new - g, mg_new - mg
        mem.push(s, yv, myv, active & (_dot(s, myv) > 0))
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
        return _fit_eigen(k, onehot, float(l2), *args)
    small = ~large
    parts = [(small, _fit_metric(_Problem(k[small], onehot[small], float(l2)), *args)),
             (large, _fit_eigen(k[large], onehot[large], float(l2), *args))]
    out = [torch.empty((e,) + t.shape[1:], dtype=t.dtype, device=t.device) for t in parts[0][1]]
    for mask, results in parts:
        for o, t in zip(out, results):
            o[mask] = t
    return out[0], out[1], out[2]
