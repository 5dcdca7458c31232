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

from typing import Any, Dict, Optional

import torch

from ..common.calibration import entropy
from ..common.choices import RepeatedTriplets, aggregate_triplets
from ..common.jsonsafe import finite_or_none as nan_to_none
from ..common.tensors import as_emb, as_triplets
from ..ops import odd_one_out_accuracy, odd_one_out_probs
from .correlation import spearman

__all__ = ["RepeatedTriplets", "aggregate_triplets", "entropy", "human_uncertainty"]


def _loo_agreement(counts: torch.Tensor) -> torch.Tensor:
    """(U,) mean over responses of P(response == majority of the other responses), ties split evenly."""
    c = counts.to(torch.float64)
    # others[u, r, p]: counts of the other responses when one response chose r.
    others = c[:, None, :] - torch.eye(3, dtype=c.dtype, device=c.device)[None]
    top = others.max(2, keepdim=True).values
    is_top = others == top
    match = is_top.diagonal(dim1=1, dim2=2).to(c.dtype) / is_top.sum(2).to(c.dtype)  # (U, r)
    return (c * match).sum(1) / c.sum(1)


def _mean_interval(values: torch.Tensor, bootstrap: int, seed: int) -> Dict[str, Any]:
    """Standard error and percentile-bootstrap 95 % interval of the mean of (U,) per-set values.

    Resampling the object sets is what a rerun on other repeated sets would vary; with a handful
    of sets the interval is wide, and two models' means inside each other's intervals are not ranked.
    """
    v = values.to(torch.float64).cpu()
    n = v.shape[0]
    se = float(v.std(unbiased=True) / n ** 0.5) if n >= 2 else None
    ci = None
    if n >= 2 and bootstrap > 0:
        gen = torch.Generator().manual_seed(seed)
        means = v[torch.randint(n, (bootstrap, n), generator=gen)].mean(1)
        ci = [float(torch.quantile(means, 0.025)), float(torch.quantile(means, 0.975))]
    return {"se": se, "ci95": ci, "bootstrap": bootstrap if ci is not None else 0}


def human_uncertainty(
    emb: Any,
    triplets: Any,
    odd: Optional[Any] = None,
    similarity: str = "dot",
    temperature: float = 1.0,
    min_repeats: int = 2,
    backend: Optional[str] = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> Dict[str, Any]:
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
        bootstrap: resamples of the object sets for the KL's 95 % interval (0: none).
        seed: seed of that bootstrap.

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
    - ``kl_human_model_interval``: its uncertainty over the object sets: ``se`` (standard
      error of the mean), ``ci95`` (percentile bootstrap over sets) and ``bootstrap``
      (resamples); ``None`` entries below two sets;
    - ``entropy_spearman``: Spearman correlation of model and human entropies;
    - ``human_entropy``, ``model_entropy``: mean entropies in nats.
    """
    if not isinstance(min_repeats, int) or min_repeats < 2:
        raise ValueError(f"min_repeats must be an int >= 2, got {min_repeats!r}")
    if not isinstance(bootstrap, int) or isinstance(bootstrap, bool) or bootstrap < 0:
        raise ValueError(f"bootstrap must be an int >= 0, got {bootstrap!r}")
    e = as_emb(emb)
    t = as_triplets(triplets, e.shape[0], e.device)
    agg = aggregate_triplets(t, odd)
    keep = agg.n >= min_repeats
    rows, counts = agg.triplets[keep], agg.counts[keep]
    out: Dict[str, Any] = {
        "min_repeats": min_repeats,
        "n_sets": int(rows.shape[0]),
        "n_responses": int(counts.sum()),
        "noise_ceiling": None,
        "noise_ceiling_loo": None,
        "n_majority": 0,
        "model_accuracy_vs_majority": None,
        "kl_human_model": None,
        "kl_human_model_interval": {"se": None, "ci95": None, "bootstrap": 0},
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
    out["kl_human_model_interval"] = _mean_interval(kl, bootstrap, seed)
    h_human, h_model = entropy(p), entropy(q)
    out["human_entropy"] = float(h_human.mean())
    out["model_entropy"] = float(h_model.mean())
    if rows.shape[0] >= 2:
        out["entropy_spearman"] = nan_to_none(spearman(h_model, h_human))
    return out
