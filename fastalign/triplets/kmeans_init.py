"""k-means initialisations, chunked over the points: greedy k-means++, k-means||, random.

Greedy k-means++ (Arthur & Vassilvitskii 2007, as in scikit-learn): every new centre is
the best of ``trials`` D^2-sampled candidates, the one whose addition leaves the lowest
potential (sum of squared distances to the nearest centre). One draw per centre (plain
k-means++) lands in local optima that merge true clusters far more often.

Memory besides the data: the (N,) nearest-centre distances, their (N,) float64 cumulative
sum and an (N, trials) candidate-distance buffer, whatever the chunk size; each step
reads the points once. Random draws come from a seeded numpy generator, the candidate
arithmetic stays on the device (no host sync per centre).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
import torch

from .kmeans_data import Points, sqdist_to


def default_trials(k: int) -> int:
    """scikit-learn's number of local trials per centre, ``2 + floor(ln k)``.

    Args:
        k: number of clusters.
    """
    return 2 + int(math.log(k))


def _dists(p: Points, c: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(N, m) squared distances of all points to centres ``c``, chunk by chunk into ``out``.

    Args:
        p: the points.
        c: (m, D) float32 centres on the device.
        out: (N, m) float32 buffer.
    """
    c_sq = (c * c).sum(1)
    for a, b, xc in p.chunks():
        sqdist_to(p, a, b, xc, c, c_sq, out[a:b])
    return out


def _draw(closest: torch.Tensor, weights: Optional[torch.Tensor], m: int, rng: np.random.Generator) -> torch.Tensor:
    """``m`` row indices drawn with probability proportional to ``weights * closest``.

    Args:
        closest: (N,) squared distance of each point to its nearest chosen centre.
        weights: (N,) point weights or None (all 1).
        m: number of draws (with replacement).
        rng: seeded generator for the uniforms.
    """
    w = closest if weights is None else closest * weights
    cum = torch.cumsum(w, 0, dtype=torch.float64)
    u = torch.from_numpy(rng.random(m)).to(cum.device) * cum[-1]
    # total potential 0 (every point sits on a centre): any point is as good as another
    return torch.searchsorted(cum, u, right=True).clamp_(max=w.numel() - 1)


def greedy_kmeanspp(p: Points, k: int, trials: int, rng: np.random.Generator,
                    weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(k, D) float32 centres by greedy k-means++ on all rows of ``p``.

    Args:
        p: the points.
        k: number of centres (<= p.n).
        trials: candidates per centre (1 is plain k-means++).
        rng: seeded generator.
        weights: (N,) float32 point weights (k-means|| candidates) or None.
    """
    # Few candidates per GEMM: take more rows per chunk (the same temporary memory as a
    # Lloyd chunk), since per-op overhead dominates a (rows, trials) product on a CPU.
    p = dataclasses.replace(p, chunk=max(p.chunk, p.chunk * max(k, p.d) // max(trials, p.d)))
    buf = torch.empty(p.n, trials, dtype=torch.float32, device=p.device)
    cent = torch.empty(k, p.d, dtype=torch.float32, device=p.device)
    if weights is None:
        first = torch.tensor([int(rng.integers(p.n))], device=p.device)
    else:
        first = _draw(weights, None, 1, rng)
    cent[0] = p.rows(first)[0]
    closest = _dists(p, cent[:1], buf[:, :1])[:, 0].clone()
    for j in range(1, k):
        cand = p.rows(_draw(closest, weights, trials, rng))
        d = torch.minimum(_dists(p, cand, buf), closest[:, None], out=buf)
        pot = d.sum(0, dtype=torch.float64) if weights is None else weights.double() @ d.double()
        best = torch.argmin(pot)
        cent[j] = cand[best]
        closest = d.index_select(1, best.view(1))[:, 0]
    return cent


def random_init(p: Points, k: int, rng: np.random.Generator) -> torch.Tensor:
    """(k, D) float32 centres: ``k`` distinct rows drawn uniformly.

    Args:
        p: the points.
        k: number of centres.
        rng: seeded generator.
    """
    return p.rows(torch.from_numpy(np.sort(rng.choice(p.n, size=k, replace=False))))


def _nearest(p: Points, c: torch.Tensor) -> tuple:
    """Per point: squared distance to and index of its nearest row of ``c`` (chunked).

    Args:
        p: the points.
        c: (m, D) float32 centres.
    """
    c_sq = (c * c).sum(1)
    md = torch.empty(p.n, dtype=torch.float32, device=p.device)
    lab = torch.empty(p.n, dtype=torch.int64, device=p.device)
    buf = torch.empty(min(p.chunk, p.n), c.shape[0], dtype=torch.float32, device=p.device)
    for a, b, xc in p.chunks():
        torch.min(sqdist_to(p, a, b, xc, c, c_sq, buf[: b - a]), 1, out=(md[a:b], lab[a:b]))
    return md, lab


def kmeans_parallel(p: Points, k: int, trials: int, rng: np.random.Generator,
                    rounds: int = 5, oversample: float = 2.0) -> torch.Tensor:
    """(k, D) centres by k-means|| (Bahmani et al. 2012) reduced with weighted greedy k-means++.

    ``rounds`` passes each keep every point with probability ``oversample * k * d^2 / phi``
    (about ``oversample * k`` points a round); the candidates, weighted by how many points
    they are nearest to, are then reduced to ``k`` centres. Costs ``rounds + 1`` passes over
    the data instead of greedy k-means++'s ``k``.

    Args:
        p: the points.
        k: number of centres.
        trials: candidates per centre in the reduction.
        rng: seeded generator.
        rounds: sampling rounds.
        oversample: expected candidates per round, in units of ``k``.
    """
    chosen = [torch.tensor([int(rng.integers(p.n))], device=p.device)]
    closest, _ = _nearest(p, p.rows(chosen[0]))
    for _ in range(rounds):
        u = torch.from_numpy(rng.random(p.n)).to(p.device)
        prob = (oversample * k) * closest.double() / closest.double().sum().clamp_min(1e-300)
        new = torch.nonzero(u < prob).flatten()
        if new.numel() == 0:
            break
        chosen.append(new)
        closest = torch.minimum(closest, _nearest(p, p.rows(new))[0])
    idx = torch.unique(torch.cat(chosen))
    if idx.numel() < k:  # too few distinct candidates: top up with random rows
        extra = torch.from_numpy(rng.permutation(p.n)).to(p.device)
        idx = torch.unique(torch.cat([idx, extra[~torch.isin(extra, idx)][: k - idx.numel()]]))
    cand = p.rows(idx)
    w = torch.bincount(_nearest(p, cand)[1], minlength=idx.numel()).float()
    cp = Points(cand, p.device, False, p.chunk, (cand * cand).sum(1))
    return greedy_kmeanspp(cp, k, trials, rng, weights=w)
