"""Teacher soft labels: similarities, odd-one-out reordering and probabilities, streamed in batches.

For each triplet the teacher similarities ``[s01, s02, s12]`` come from
``fastalign.triplet_similarities`` on the teacher embeddings. Each row is then
reordered so that item 2 is the teacher's odd one out, i.e. ``s01`` is the
largest similarity (AligNet's file convention and fastalign's):

=============  =================  ======================================
largest pair   odd one out        new row / new sims
=============  =================  ======================================
s01 (p = 0)    item 2             (i, j, k), [s01, s02, s12]
s02 (p = 1)    item 1             (i, k, j), [s02, s01, s12]
s12 (p = 2)    item 0             (j, k, i), [s12, s01, s02]
=============  =================  ======================================

The similarities are permuted, never recomputed, so the reordering is exact.
Ties keep the first maximum (``argmax``). Probabilities are
``softmax(s / T)`` of the float32 similarities, with ``T`` the teacher's
calibrated temperature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from ..ops import triplet_similarities

# For the pair p with the largest similarity: new item order and new sim order.
ITEM_ORDER = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 2, 0]])
SIM_ORDER = torch.tensor([[0, 1, 2], [1, 0, 2], [2, 0, 1]])


@dataclass
class LabelOptions:
    """Options of ``label_triplets``.

    Attributes:
        temperature: softmax temperature T (> 0) of the stored probabilities.
        similarity: "dot" or "cosine".
        with_probs: also return ``softmax(s / T)``.
        batch_size: triplets per similarity call (bounds gathered rows to 3 * batch_size * D).
        backend: kernel backend name for ``triplet_similarities`` (None: default dispatch).
    """

    temperature: float = 1.0
    similarity: str = "dot"
    with_probs: bool = False
    batch_size: int = 16384
    backend: Optional[str] = None


def reorder_by_odd(triplets: torch.Tensor, sims: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reorder rows so that ``sims[:, 0]`` is the largest (item 2 is the odd one out).

    Args:
        triplets: (B, 3) integer rows.
        sims: (B, 3) ``[s01, s02, s12]`` of those rows.
    Returns ``(triplets, sims)`` reordered (new tensors).
    """
    p = sims.argmax(dim=1)
    io = ITEM_ORDER.to(sims.device)[p]
    so = SIM_ORDER.to(sims.device)[p]
    return triplets.gather(1, io.to(triplets.device)), sims.gather(1, so)


def label_triplets(
    emb: torch.Tensor, triplets, opts: LabelOptions = LabelOptions()
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Teacher-label triplets in batches.

    Args:
        emb: (N, D) teacher embeddings (already transformed), on the labelling device.
        triplets: (B, 3) integer numpy array or tensor of rows into ``emb``.
        opts: ``LabelOptions``.

    Returns ``(triplets (B, 3) int64, sims (B, 3) float32, probs (B, 3) float32 or None)``
    on the CPU, rows reordered so item 2 is the teacher's odd one out.
    """
    t = float(opts.temperature)
    if not (t > 0 and np.isfinite(t)):
        raise ValueError(f"temperature must be finite and > 0, got {opts.temperature!r}")
    if opts.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {opts.batch_size}")
    trip = torch.as_tensor(triplets)
    if trip.dim() != 2 or trip.shape[1] != 3:
        raise ValueError(f"triplets must have shape (B, 3), got {tuple(trip.shape)}")
    trip = trip.to(torch.int64)
    n = trip.shape[0]
    out_t = torch.empty(n, 3, dtype=torch.int64)
    out_s = torch.empty(n, 3, dtype=torch.float32)
    out_p = torch.empty(n, 3, dtype=torch.float32) if opts.with_probs else None
    with torch.no_grad():
        for a in range(0, n, opts.batch_size):
            b = min(n, a + opts.batch_size)
            tb = trip[a:b].to(emb.device)
            s = triplet_similarities(emb, tb, similarity=opts.similarity, backend=opts.backend).float()
            tb, s = reorder_by_odd(tb, s)
            out_t[a:b] = tb.cpu()
            out_s[a:b] = s.cpu()
            if out_p is not None:
                out_p[a:b] = torch.softmax(s / t, dim=1).cpu()
    return out_t, out_s, out_p


def entropy(probs: np.ndarray) -> np.ndarray:
    """Row entropies (nats) of (B, 3) probabilities, with 0 log 0 = 0."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)


def softmax_np(sims: np.ndarray, temperature: float) -> np.ndarray:
    """float64 ``softmax(sims / T)`` over rows (for histograms and checks)."""
    z = np.asarray(sims, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
