"""Human uncertainty: repeated triplets as choice distributions, and how well a model matches them.

A triplet may be shown many times, its objects in any order, and people may
pick different odd ones out. ``aggregate_triplets`` keys every response by its
sorted object set (one integer key, one ``torch.unique``), so repeats in any
order collapse into one row with a count per choice. No Python loop over rows.

Distributions are kept in the ops' pair order of the *sorted* triplet
``(a, b, c)``, ``a < b < c``: ``[p01, p02, p12]`` = P(c odd), P(b odd), P(a odd),
so they compare directly with ``odd_one_out_probs`` on the sorted rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from ..ops import odd_one_out_accuracy, odd_one_out_probs
from ._util import as_emb, as_index, as_triplets, nan_to_none
from .correlation import spearman

__all__ = ["RepeatedTriplets", "aggregate_triplets", "entropy", "human_uncertainty"]


@dataclass(frozen=True)
class RepeatedTriplets:
    """Responses grouped by object set.

    Attributes:
        triplets: (U, 3) int64 object ids, each row sorted ascending.
        counts: (U, 3) int64 responses per pair, pair order ``[s01, s02, s12]`` of
            the sorted row (choosing pair p as most similar = object ``2 - p`` odd).
    """

    triplets: torch.Tensor
    counts: torch.Tensor

    @property
    def n(self) -> torch.Tensor:
        """(U,) responses per object set."""
        return self.counts.sum(1)

    @property
    def distribution(self) -> torch.Tensor:
        """(U, 3) float64 human choice probabilities in pair order."""
        return self.counts.to(torch.float64) / self.n[:, None].to(torch.float64)


def aggregate_triplets(triplets: Any, odd: Optional[Any] = None) -> RepeatedTriplets:
    """Group responses by their (unordered) object set.

    Args:
        triplets: (B, 3) object indices, column 2 the odd one out unless ``odd`` is given.
        odd: optional (B,) positions {0, 1, 2} of the odd one out.

    Raises ValueError on a row that repeats an object (it has no odd one out).
    """
    t = as_index(triplets, "triplets", width=3)
    if t.numel() and int(t.min()) < 0:
        raise ValueError("triplets must hold non-negative object indices")
    b = t.shape[0]
    if odd is None:
        odd_pos = torch.full((b,), 2, dtype=torch.int64, device=t.device)
    else:
        odd_pos = as_index(odd, "odd", t.device)
        if odd_pos.shape != (b,):
            raise ValueError(f"odd must have shape ({b},), got {tuple(odd_pos.shape)}")
        if b and bool(((odd_pos < 0) | (odd_pos > 2)).any()):
            raise ValueError("odd must hold positions in {0, 1, 2}")
    srt, _ = torch.sort(t, dim=1)
    dup = (srt[:, 0] == srt[:, 1]) | (srt[:, 1] == srt[:, 2])
    if bool(dup.any()):
        row = int(dup.nonzero()[0, 0])
        raise ValueError(f"triplets row {row} = {t[row].tolist()} repeats an object")
    odd_id = t.gather(1, odd_pos[:, None])
    pos_sorted = (srt == odd_id).long().argmax(1)  # where the odd object sits in the sorted row
    pair = 2 - pos_sorted
    n_obj = int(t.max()) + 1 if b else 1
    if n_obj ** 3 < 2**62:
        key = (srt[:, 0] * n_obj + srt[:, 1]) * n_obj + srt[:, 2]
        _, inv = torch.unique(key, return_inverse=True)
    else:  # ids too large for one int64 key
        _, inv = torch.unique(srt, dim=0, return_inverse=True)
    u = int(inv.max()) + 1 if b else 0
    counts = torch.bincount(inv * 3 + pair, minlength=3 * u).reshape(u, 3)
    rows = torch.empty((u, 3), dtype=torch.int64, device=t.device)
    rows[inv] = srt
    return RepeatedTriplets(rows, counts)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Row entropies in nats with ``0 log 0 = 0``."""
    logp = torch.where(p > 0, torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)), torch.zeros_like(p))
    return -(p * logp).sum(-1)


def _loo_agreement(counts: torch.Tensor) -> torch.Tensor:
    """(U,) mean over responses of P(response == majority of the other responses), ties split evenly."""
    c = counts.to(torch.float64)
    # others[u, r, p]: counts of the other responses when one response chose r.
    others = c[:, None, :] - torch.eye(3, dtype=c.dtype, device=c.device)[None]
    top = others.max(2, keepdim=True).values
    is_top = others == top
    match = is_top.diagonal(dim1=1, dim2=2).to(c.dtype) / is_top.sum(2).to(c.dtype)  # (U, r)
    return (c * match).sum(1) / c.sum(1)


def human_uncertainty(
    emb: Any,
    triplets: Any,
    odd: Optional[Any] = None,
    similarity: str = "dot",
    temperature: float = 1.0,
    min_repeats: int = 2,
    backend: Optional[str] = None,
) -> Dict[str, Optional[float]]:
    """Compare a model with human choice distributions over repeated triplets.

    Only object sets with at least ``min_repeats`` responses count (a single
    response always "agrees with itself").

    Args:
        emb: (N, D) model embeddings.
        triplets: (B, 3) responses, column 2 the odd one out unless ``odd`` is given.
        odd: optional (B,) odd-one-out positions.
        similarity: ``"dot"`` or ``"cosine"``.
        temperature: model softmax temperature (> 0) for the probabilities.
        min_repeats: minimum responses per object set, >= 2.
        backend: kernel backend.

    Returns a dict (floats; ``None`` where undefined):

    - ``n_sets``, ``n_responses``: object sets with enough repeats, and their responses;
    - ``noise_ceiling``: mean over sets of (majority count / responses), i.e. the
      mean agreement of a response with its set's majority choice. The response
      itself counts towards the majority, so this is optimistic for sets with few
      responses (2 responses agree with "their" majority at least half the time);
    - ``noise_ceiling_loo``: the leave-one-out version: how often a response
      matches the majority of the *other* responses to its set (a tie among the
      others counts as a fractional match, as a random tie-break would), averaged
      over sets;
    - ``n_majority``: sets with a unique majority choice;
    - ``model_accuracy_vs_majority``: model accuracy (ties wrong) against that
      majority, over the ``n_majority`` sets;
    - ``kl_human_model``: mean KL(human || model) in nats;
    - ``entropy_spearman``: Spearman correlation of model and human entropies;
    - ``human_entropy``, ``model_entropy``: mean entropies in nats.
    """
    if not isinstance(min_repeats, int) or min_repeats < 2:
        raise ValueError(f"min_repeats must be an int >= 2, got {min_repeats!r}")
    e = as_emb(emb)
    t = as_triplets(triplets, e.shape[0], e.device)
    agg = aggregate_triplets(t, odd)
    keep = agg.n >= min_repeats
    rows, counts = agg.triplets[keep], agg.counts[keep]
    out: Dict[str, Optional[float]] = {
        "min_repeats": min_repeats,
        "n_sets": int(rows.shape[0]),
        "n_responses": int(counts.sum()),
        "noise_ceiling": None,
        "noise_ceiling_loo": None,
        "n_majority": 0,
        "model_accuracy_vs_majority": None,
        "kl_human_model": None,
        "entropy_spearman": None,
        "human_entropy": None,
        "model_entropy": None,
    }
    if rows.shape[0] == 0:
        return out
    n = counts.sum(1).to(torch.float64)
    top, top_pair = counts.max(1)
    out["noise_ceiling"] = float((top.to(torch.float64) / n).mean())
    out["noise_ceiling_loo"] = float(_loo_agreement(counts).mean())
    unique_major = (counts == top[:, None]).sum(1) == 1
    out["n_majority"] = int(unique_major.sum())
    if out["n_majority"]:
        acc = odd_one_out_accuracy(
            e, rows[unique_major], odd=2 - top_pair[unique_major], similarity=similarity, backend=backend
        )
        out["model_accuracy_vs_majority"] = nan_to_none(acc)
    with torch.no_grad():
        q = odd_one_out_probs(e, rows, temperature=temperature, similarity=similarity, backend=backend)
    q = q.to(torch.float64)
    p = counts.to(torch.float64) / n[:, None]
    logq = torch.log(q.clamp_min(torch.finfo(torch.float64).tiny))
    kl = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - logq), torch.zeros_like(p)).sum(1)
    out["kl_human_model"] = float(kl.mean())
    h_human, h_model = entropy(p), entropy(q)
    out["human_entropy"] = float(h_human.mean())
    out["model_entropy"] = float(h_model.mean())
    if rows.shape[0] >= 2:
        out["entropy_spearman"] = nan_to_none(spearman(h_model, h_human))
    return out
