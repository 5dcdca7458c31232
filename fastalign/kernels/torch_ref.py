"""The plain-PyTorch backend: the readable statement of the math and the fallback.

It gathers rows a chunk of triplets at a time, so its memory is
O(chunk * D + N * D) for any B. Every faster backend is tested against it and
against an independent float64 autograd reference (``tests/reference.py``).
See ``fastalign.kernels.contract`` for the math and the gradient derivations.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .contract import COSINE_EPS, MODE_HARD, MODE_JSD, MODE_KL, acc_dtype

# Rows of a triplet chunk gathered at once; bounds the working set to
# CHUNK * 3 * D accumulation-dtype values.
CHUNK = 16384

_LOG2 = math.log(2.0)


def _gather(emb: torch.Tensor, trip: torch.Tensor, acc: torch.dtype) -> Tuple[torch.Tensor, ...]:
    rows = emb.index_select(0, trip.reshape(-1).long()).to(acc)
    rows = rows.view(trip.shape[0], 3, emb.shape[1])
    return rows[:, 0], rows[:, 1], rows[:, 2]


def _pair_sims(e0, e1, e2, cosine: bool):
    """Return sims (b, 3) and, for cosine, the unit rows and (norm, unclamped) pairs."""
    if cosine:
        norms = []
        units = []
        for e in (e0, e1, e2):
            raw = e.norm(dim=1)
            n = raw.clamp_min(COSINE_EPS)
            units.append(e / n[:, None])
            # A clamped norm is a constant: its row loses the -s u term of the gradient.
            norms.append((n, (raw >= COSINE_EPS).to(e.dtype)))
        u0, u1, u2 = units
        s = torch.stack([(u0 * u1).sum(1), (u0 * u2).sum(1), (u1 * u2).sum(1)], dim=1)
        return s, (u0, u1, u2), norms
    s = torch.stack([(e0 * e1).sum(1), (e0 * e2).sum(1), (e1 * e2).sum(1)], dim=1)
    return s, None, None


def _row_grads(e0, e1, e2, s, c, unit, norms):
    """dL/de for the three slots given c = dL/ds (b, 3)."""
    c01, c02, c12 = c[:, 0:1], c[:, 1:2], c[:, 2:3]
    if unit is None:
        g0 = c01 * e1 + c02 * e2
        g1 = c01 * e0 + c12 * e2
        g2 = c02 * e0 + c12 * e1
        return g0, g1, g2
    u0, u1, u2 = unit
    (n0, k0), (n1, k1), (n2, k2) = ((n[:, None], k[:, None]) for n, k in norms)
    s01, s02, s12 = s[:, 0:1], s[:, 1:2], s[:, 2:3]
    # ds_ab/de_a = (u_b - s_ab u_a) / n_a   (the second term only where n_a is not clamped)
    g0 = (c01 * (u1 - s01 * k0 * u0) + c02 * (u2 - s02 * k0 * u0)) / n0
    g1 = (c01 * (u0 - s01 * k1 * u1) + c12 * (u2 - s12 * k1 * u1)) / n1
    g2 = (c02 * (u0 - s02 * k2 * u2) + c12 * (u1 - s12 * k2 * u2)) / n2
    return g0, g1, g2


def loss_and_dsim(
    s: torch.Tensor,
    target: Optional[torch.Tensor],
    choice: Optional[torch.Tensor],
    mode: int,
    temperature: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-triplet loss and dL/ds from the (b, 3) similarities."""
    z = s / temperature
    logq = torch.log_softmax(z, dim=1)
    q = logq.exp()
    if mode == MODE_HARD:
        if choice is None:
            loss = -logq[:, 0]
            onehot = torch.zeros_like(q)
            onehot[:, 0] = 1.0
        else:
            loss = -logq.gather(1, choice[:, None]).squeeze(1)
            onehot = torch.zeros_like(q).scatter_(1, choice[:, None], 1.0)
        dz = q - onehot
    elif mode == MODE_KL:
        p = target
        plogp = torch.xlogy(p, p)
        loss = (plogp - p * logq).sum(1)
        dz = q - p
    elif mode == MODE_JSD:
        p = target
        logp = torch.log(p)  # -inf where p == 0, handled by logaddexp / xlogy
        logm = torch.logaddexp(logp, logq) - _LOG2
        plogp = torch.xlogy(p, p)
        loss = 0.5 * (plogp - p * logm).sum(1) + 0.5 * (q * (logq - logm)).sum(1)
        g = 0.5 * (logq - logm)
        dz = q * (g - (q * g).sum(1, keepdim=True))
    else:  # pragma: no cover - ops validates the mode
        raise AssertionError(mode)
    return loss, dz / temperature


class TorchKernels:
    """Chunked PyTorch implementation of ``TripletKernels``."""

    name = "torch"

    def __init__(self, chunk: int = CHUNK):
        self.chunk = chunk

    def _chunks(self, n: int):
        for start in range(0, n, self.chunk):
            yield start, min(start + self.chunk, n)

    def similarities(self, emb, triplets, cosine):
        acc = acc_dtype(emb.dtype)
        out = torch.empty(triplets.shape[0], 3, dtype=acc, device=emb.device)
        for a, b in self._chunks(triplets.shape[0]):
            e0, e1, e2 = _gather(emb, triplets[a:b], acc)
            out[a:b] = _pair_sims(e0, e1, e2, cosine)[0]
        return out

    def fused(self, emb, triplets, target, choice, rowscale, mode, cosine, temperature, grad_scale, want_grad):
        acc = acc_dtype(emb.dtype)
        n_trip = triplets.shape[0]
        loss = torch.empty(n_trip, dtype=acc, device=emb.device)
        dsim = torch.empty(n_trip, 3, dtype=acc, device=emb.device)
        grad = torch.zeros(emb.shape, dtype=acc, device=emb.device) if want_grad else emb.new_empty(0, dtype=acc)
        for a, b in self._chunks(n_trip):
            trip = triplets[a:b]
            e0, e1, e2 = _gather(emb, trip, acc)
            s, unit, norms = _pair_sims(e0, e1, e2, cosine)
            l, ds = loss_and_dsim(
                s,
                None if target is None else target[a:b],
                None if choice is None else choice[a:b],
                mode,
                temperature,
            )
            loss[a:b] = l
            dsim[a:b] = ds
            if want_grad:
                c = ds * grad_scale
                if rowscale is not None:
                    c = c * rowscale[a:b, None]
                self._accumulate(grad, trip, e0, e1, e2, s, c, unit, norms)
        return loss, dsim, grad

    def scatter(self, emb, triplets, coef, cosine):
        acc = acc_dtype(emb.dtype)
        grad = torch.zeros(emb.shape, dtype=acc, device=emb.device)
        for a, b in self._chunks(triplets.shape[0]):
            trip = triplets[a:b]
            e0, e1, e2 = _gather(emb, trip, acc)
            s, unit, norms = _pair_sims(e0, e1, e2, cosine)
            self._accumulate(grad, trip, e0, e1, e2, s, coef[a:b].to(acc), unit, norms)
        return grad

    @staticmethod
    def _accumulate(grad, trip, e0, e1, e2, s, c, unit, norms):
        g0, g1, g2 = _row_grads(e0, e1, e2, s, c, unit, norms)
        idx = trip.long()
        # index_add_ sums repeated indices, within and across triplets.
        grad.index_add_(0, idx[:, 0], g0)
        grad.index_add_(0, idx[:, 1], g1)
        grad.index_add_(0, idx[:, 2], g2)
