"""Many small multinomial logistic regressions at once, from their Gram matrices.

Problem ``e`` of a batch minimises, over its ``n`` rows ``x_i`` (``D`` features)::

    f(W, b) = mean_i CE(x_i W + b, y_i) + l2 / 2 * ||W||_F^2        (b not penalised)

Three changes of variables that leave the minimiser alone make it small and
well conditioned; then L-BFGS runs on every problem at once:

1. Centring. ``x W + b = (x - mean) W + (b + mean W)`` and ``b`` is free, so the
   rows can be centred; that removes the common direction of all rows, which
   otherwise nearly duplicates the bias.
2. Kernel coordinates. Every gradient in ``W`` is ``Xc^T (something)``, so the
   minimiser is ``W = Xc^T A``: with the centred Gram matrix
   ``Kc = Xc Xc^T = U diag(lam) U^T`` and ``Z = U diag(lam)^(1/2)`` the logits
   are ``Z V + b`` and ``||W|| = ||V||`` for ``V = diag(lam)^(1/2) U^T A``:
   ``n x C`` unknowns instead of ``D x C`` (a few-shot support set has far fewer
   rows than features).
3. Preconditioning. In these coordinates the Hessian is about
   ``diag(beta lam / n + l2)`` per class, ``beta`` the cross-entropy's curvature
   (``1 / C`` at uniform probabilities, less as the fit grows confident: ``0.5 / C``
   took the fewest iterations on the THINGS probes); L-BFGS runs on ``V`` scaled
   by its square root, and on ``b`` scaled by ``beta^(1/2)``.

L-BFGS applies its matrix in the compact form (Byrd, Nocedal and Schnabel,
1994): ``H g = gamma g + S p - gamma Y z`` with ``z = R^-1 S^T g`` and ``p`` from
one more triangular solve, ``R`` the upper triangle of ``S^T Y``: two batched
products with the stored pairs per iteration instead of the two-loop recursion's
eight elementwise passes per pair (on a loaded CPU every large op waits for
both threads). Each problem has its own history, step and stopping test: the
gradient norm of the original problem, relative to its first one, ``<= tol``.
The line search is exact: safeguarded Newton steps on ``phi'(t)``, whose
derivatives along the direction cost one softmax of the ``n x C`` logits (the
objective is convex, so the step that zeroes ``phi'`` is the minimiser along
the direction).
"""

from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["fit_kernel_logreg"]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of (E, P) matrices: (E,)."""
    return (a * b).sum(1)


class _Problem:
    """A batch in preconditioned kernel coordinates; parameters are flat rows ``theta = (vec V~, b~)``."""

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


class _Memory:
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
    prob = _Problem(k, torch.nn.functional.one_hot(yy.long(), n_classes).to(k.dtype), float(l2))
    theta = torch.zeros((e, prob.na + n_classes), dtype=k.dtype, device=k.device)
    logits = torch.zeros_like(prob.onehot)
    g = prob.gradient(theta, logits)
    g0 = prob.grad_norm(g)
    active = g0 > 0
    iters = torch.zeros(e, dtype=torch.int64, device=k.device)
    mem = _Memory(e, theta.shape[1], max(1, int(history)), theta)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        d = mem.apply(g).neg_()
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
