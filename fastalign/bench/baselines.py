"""The baselines: the triplet math as a user would write it in eager PyTorch.

``objective(op, ...)`` returns a plain function of ``(emb, triplets, target)``
that gathers the three rows of every triplet into a (b, 3, D) tensor, upcasts
to float32 (the contract's accumulation dtype), and computes the similarities
and the loss with autograd providing the backward. The ``compile`` baseline is
``torch.compile`` of exactly this function.

The gather is the weak point: at N=1.28M, D=1152, B=10M in bf16 the (B, 3, D)
gather alone is 69 GB (138 GB once upcast), so ``ChunkedObjective`` runs the
same function over chunks of triplets whose workspace fits a byte budget. The
forward sums the chunks' losses; forward + backward takes each chunk's
gradient with ``torch.autograd.grad`` and adds them up, which is how one
trains with gradient accumulation. A chunked run has no single graph, so its
backward alone is not measured (the report says so).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..kernels.contract import COSINE_EPS

_LOG2 = math.log(2.0)

# fp32 (b, 3, D)-sized buffers alive at the peak of eager forward + backward:
# the upcast rows, the pair products, the products' gradients and the rows'
# gradient (a conservative count; the run also catches out-of-memory).
_FWD_BWD_COPIES = 4


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def eager_sims(emb: torch.Tensor, trip: torch.Tensor, cosine: bool = False) -> torch.Tensor:
    """(b, 3) pair similarities ``[s01, s02, s12]`` by gathering the rows."""
    b = trip.shape[0]
    rows = emb.index_select(0, trip.reshape(-1)).view(b, 3, emb.shape[1]).to(_acc(emb.dtype))
    if cosine:
        rows = rows / rows.norm(dim=2, keepdim=True).clamp_min(COSINE_EPS)
    e0, e1, e2 = rows.unbind(1)
    return torch.stack([(e0 * e1).sum(1), (e0 * e2).sum(1), (e1 * e2).sum(1)], dim=1)


def eager_per_triplet(sims: torch.Tensor, target: Optional[torch.Tensor], op: str, temperature: float) -> torch.Tensor:
    """Per-triplet loss from (b, 3) similarities.

    "hard": ``-log q_0`` (the odd one out is column 2, so pair (0, 1) was chosen);
    "kl": ``sum p log(p / q)``; "jsd": the Jensen-Shannon divergence of p and q.
    """
    logq = torch.log_softmax(sims / temperature, dim=1)
    if op == "hard":
        return -logq[:, 0]
    p = target
    plogp = torch.xlogy(p, p)
    if op == "kl":
        return (plogp - p * logq).sum(1)
    if op == "jsd":
        # log m via logaddexp so a zero target never gives 0 * inf.
        logm = torch.logaddexp(torch.log(p), logq) - _LOG2
        q = logq.exp()
        return 0.5 * (plogp - p * logm).sum(1) + 0.5 * (q * (logq - logm)).sum(1)
    raise ValueError(f"op must be 'hard', 'kl' or 'jsd', got {op!r}")


def objective(op: str, cosine: bool = False, temperature: float = 1.0) -> Callable:
    """The eager function ``f(emb, trip, target)`` for ``op``.

    For "sims" it returns the (b, 3) similarities; for a loss, the *sum* of the
    per-triplet losses of the chunk (the caller divides by the total B, so
    chunks add up to the "mean" reduction).
    """
    if op == "sims":
        def sims_fn(emb, trip, target=None):
            return eager_sims(emb, trip, cosine)
        return sims_fn

    def loss_fn(emb, trip, target=None):
        return eager_per_triplet(eager_sims(emb, trip, cosine), target, op, temperature).sum()
    return loss_fn


def workspace_bytes(b: int, d: int, elt: int, with_grad: bool) -> int:
    """Estimated peak workspace of the eager math on b triplets (beyond the inputs)."""
    gather = b * 3 * d * elt
    fp32 = b * 3 * d * 4
    return gather + fp32 * (_FWD_BWD_COPIES if with_grad else 2)


def plan_chunks(b: int, max_chunk: int) -> int:
    """Chunk size <= ``max_chunk`` that splits b into equal chunks when possible.

    Equal chunks keep ``torch.compile`` at one static shape (a smaller last
    chunk would trigger a second compilation).
    """
    max_chunk = max(1, min(b, max_chunk))
    n_min = -(-b // max_chunk)
    for n in range(n_min, min(b, 4 * n_min) + 1):
        if b % n == 0:
            return b // n
    return -(-b // n_min)


class ChunkedObjective:
    """Runs an ``objective`` over chunks of triplets.

    Args:
        fn: the per-chunk function (eager or compiled).
        op: the op name ("sims" or a loss).
        emb, trip, target: the full inputs.
        chunk: triplets per chunk (>= B means one chunk).
        grad_out: the (B, 3) upstream gradient for "sims" (ignored for losses).
    """

    def __init__(self, fn: Callable, op: str, emb: torch.Tensor, trip: torch.Tensor,
                 target: Optional[torch.Tensor], chunk: int, grad_out: Optional[torch.Tensor] = None):
        self.fn, self.op = fn, op
        self.emb, self.trip, self.target = emb, trip, target
        self.b = trip.shape[0]
        self.chunk = max(1, min(chunk, self.b))
        self.grad_out = grad_out

    @property
    def n_chunks(self) -> int:
        return -(-self.b // self.chunk)

    def _slices(self):
        for a in range(0, self.b, self.chunk):
            yield slice(a, min(a + self.chunk, self.b))

    def _call(self, s: slice):
        tgt = None if self.target is None else self.target[s]
        return self.fn(self.emb, self.trip[s], tgt)

    def forward(self) -> torch.Tensor:
        """The loss ("mean" over all B) or the (B, 3) similarities, without a graph."""
        with torch.no_grad():
            if self.op == "sims":
                return torch.cat([self._call(s) for s in self._slices()])
            total = None
            for s in self._slices():
                part = self._call(s)
                total = part if total is None else total + part
            return total / self.b

    def forward_backward(self):
        """``(loss or sims, dL/demb)``, accumulating the chunks' gradients."""
        emb = self.emb
        grad = None
        outs = []
        for s in self._slices():
            out = self._call(s)
            if self.op == "sims":
                (g,) = torch.autograd.grad(out, emb, self.grad_out[s])
            else:
                out = out / self.b
                (g,) = torch.autograd.grad(out, emb)
            outs.append(out.detach())
            grad = g if grad is None else grad.add_(g)
        out = torch.cat(outs) if self.op == "sims" else torch.stack(outs).sum()
        return out, grad

    def graph(self) -> torch.Tensor:
        """The full output with its autograd graph (one chunk only)."""
        if self.n_chunks != 1:
            raise RuntimeError("a chunked baseline has no single graph; time forward+backward instead")
        out = self._call(slice(0, self.b))
        return out if self.op == "sims" else out / self.b
