"""The eigen-preconditioned few-shot logistic-regression fit: the fallback of ``fastalign.eval.logreg``
for problems whose metric bound ``U`` is large (features far from unit norm, or a small l2).

Same objective, minimiser and stopping test as ``fit_kernel_logreg``; the coordinates differ.
With ``Kc = U diag(lam) U^T`` (one ``eigh`` per problem) and ``Z = U diag(lam)^(1/2)`` the
logits are ``Z V + b`` and ``||W|| = ||V||`` for ``V = diag(lam)^(1/2) U^T A``. There the
Hessian is about ``diag(beta lam / n + l2)`` per class (``beta`` the cross-entropy's curvature,
``0.5 / C`` here); L-BFGS runs in the Euclidean metric on ``V`` scaled by its square root, and on
``b`` scaled by ``beta^(1/2)``: a condition number about 1 whatever ``U`` is, for the price of the
eigendecomposition.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .lbfgs import LBFGSMemory, newton_line_search, row_dot

__all__ = ["fit_eigen"]


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
        pd = self.penalty_grad(d)
        a_pd = (pd * self.split(theta)[0]).sum((1, 2))  # the penalty's phi' at t = 0 ...
        d_pd = (pd * self.split(d)[0]).sum((1, 2))  # ... and its constant phi''
        return newton_line_search(logits, df, self.onehot, a_pd, d_pd, steps)

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


def fit_eigen(k, onehot, l2, max_iter, tol, history, line_steps):
    """The eigen-preconditioned fit (one ``eigh`` per problem): for problems whose ``U`` is large."""
    prob = _EigenProblem(k, onehot, l2)
    e, n_classes = k.shape[0], onehot.shape[2]
    theta = torch.zeros((e, prob.na + n_classes), dtype=k.dtype, device=k.device)
    logits = torch.zeros_like(prob.onehot)
    g = prob.gradient(theta, logits)
    g0 = prob.grad_norm(g)
    active = g0 > 0
    iters = torch.zeros(e, dtype=torch.int64, device=k.device)
    mem = LBFGSMemory(e, theta.shape[1], max(1, int(history)), theta)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        # Euclidean: g is its own image. A new tensor: with an empty memory apply returns g itself.
        d = -mem.apply(g, g)
        # Rounding can cost a direction its descent; fall back to the gradient there.
        uphill = row_dot(d, g) >= 0
        if bool(uphill.any()):
            d = torch.where(uphill[:, None], -g, d)
        df = prob.logits(d)
        t = torch.where(active, prob.line_search(theta, logits, d, df, line_steps), torch.zeros_like(g0))
        s = t[:, None] * d
        theta = theta + s
        logits = torch.addcmul(logits, t[:, None, None], df)
        g_new = prob.gradient(theta, logits)
        yv = g_new - g
        mem.push(s, yv, yv, active & (row_dot(s, yv) > 0))
        g = g_new
        iters += active.long()
        active = active & (prob.grad_norm(g) > tol * g0)
    a, b = prob.solution(theta)
    return a, b, iters
