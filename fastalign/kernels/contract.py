"""The kernel contract every backend implements.

A backend is a ``TripletKernels`` object. ``fastalign.ops`` validates every
input once, then calls these methods with tensors that already satisfy the
preconditions below, so kernels validate nothing.

Preconditions (guaranteed by ``fastalign.ops``)
-----------------------------------------------
- ``emb``: (N, D) float64/float32/float16/bfloat16, unit stride in the last dim
  (row stride may be anything >= D).
- ``triplets``: (B, 3) int32 or int64, contiguous, every entry in [0, N).
- ``target``: (B, 3) contiguous, in the accumulation dtype, rows are
  probabilities in pair order ``[p01, p02, p12]``; ``None`` for the hard loss.
- ``choice``: (B,) int64 contiguous, values in {0, 1, 2}: the index of the
  pair humans chose as most similar (``2 - odd``); ``None`` means all 0.
- ``rowscale``: (B,) accumulation dtype or ``None`` (= 1).
- ``temperature`` > 0.

Accumulation dtype ("acc"): float64 when ``emb`` is float64, else float32.

Math (pair order p = 0: (0, 1), 1: (0, 2), 2: (1, 2))
----------------------------------------------------
``s_p = <e_a, e_b>`` (dot) or ``<e_a, e_b> / (n_a n_b)`` with
``n = max(||e||, COSINE_EPS)`` (cosine). ``z = s / T``, ``q = softmax(z)``.

- hard (MODE_HARD): ``L = -log q_c``.                dL/dz = q - onehot(c)
- kl   (MODE_KL):   ``L = sum_k p_k (log p_k - log q_k)``.  dL/dz = q - p
- jsd  (MODE_JSD):  ``m = (p + q) / 2``,
  ``L = 1/2 sum p log(p/m) + 1/2 sum q log(q/m)``.
  dL/dq_k = -p_k/(4 m_k) + 1/2 log(q_k/m_k) + 1/2 - q_k/(4 m_k)
          = 1/2 log(q_k / m_k)                   (because p_k + q_k = 2 m_k)
  then through the softmax: dL/dz_j = q_j (g_j - sum_k q_k g_k), g = dL/dq.
  ``log m`` is taken as ``logaddexp(log p, log q) - log 2`` so that a target
  entry of exactly 0 never produces 0 * inf.
- Terms with ``p_k = 0`` contribute 0 to KL and JSD (the limit of p log p).

In every case dL/ds = dL/dz / T.

Row gradients (c_p = dL/ds_p, scaled by the row's factor):

- dot:    dE[a] += c_p e_b and dE[b] += c_p e_a for each pair p = (a, b).
- cosine: with u = e / n,  ds_p/de_a = (u_b - s_p u_a) / n_a
  (n treated as a constant when it is clamped at COSINE_EPS).

An index that repeats, within or across triplets, receives the sum of its
contributions.
"""

from __future__ import annotations

from typing import Optional, Protocol, Tuple

import torch

MODE_HARD = 0
MODE_KL = 1
MODE_JSD = 2
MODES = {"hard": MODE_HARD, "kl": MODE_KL, "jsd": MODE_JSD}

COSINE_EPS = 1e-8

# Pair p joins slots PAIRS[p] of a triplet.
PAIRS = ((0, 1), (0, 2), (1, 2))


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype for an embedding dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class TripletKernels(Protocol):
    """What a backend provides. All outputs are in the accumulation dtype."""

    name: str

    def similarities(self, emb: torch.Tensor, triplets: torch.Tensor, cosine: bool) -> torch.Tensor:
        """Return the (B, 3) pair similarities ``[s01, s02, s12]``."""

    def fused(
        self,
        emb: torch.Tensor,
        triplets: torch.Tensor,
        target: Optional[torch.Tensor],
        choice: Optional[torch.Tensor],
        rowscale: Optional[torch.Tensor],
        mode: int,
        cosine: bool,
        temperature: float,
        grad_scale: float,
        want_grad: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fused forward (and, when ``want_grad``, backward) of a triplet loss.

        Returns ``(loss, dsim, grad)``:

        - ``loss`` (B,): the unweighted per-triplet loss;
        - ``dsim`` (B, 3): dloss_b/ds_b, unweighted;
        - ``grad`` (N, D): ``grad_scale * sum_b rowscale_b * dloss_b/demb`` when
          ``want_grad``, else an empty (0,) tensor.
        """

    def scatter(self, emb: torch.Tensor, triplets: torch.Tensor, coef: torch.Tensor, cosine: bool) -> torch.Tensor:
        """Return the (N, D) gradient ``sum_b sum_p coef[b, p] * ds_bp/demb``."""
